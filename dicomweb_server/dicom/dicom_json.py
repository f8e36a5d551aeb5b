"""DICOM JSON (PS3.18 Annex F) for a parsed header, computed once at ingest.

pydicom's ``Dataset.to_json_dict`` is the reference, but it converts every raw
element into a full ``DataElement`` first, which costs milliseconds per
instance.  This module encodes the common VRs straight from the raw bytes that
pydicom's reader already split into elements, and hands everything unusual
(sequences, AT, ambiguous VRs, character sets other than ASCII, Latin-1 and
UTF-8, malformed numbers) back to pydicom element by element.  A unit test
checks that both paths agree over pydicom's whole test corpus.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

JSON = dict[str, Any]
# (tag path from the instance root, e.g. ("00540016", "0", "00181072")) -> BulkDataURI
BulkURI = Callable[[tuple[str, ...]], str]

# PS3.5 §6.1.2.3: character sets whose bytes decode with one Python codec, no ISO 2022 escapes.
_SIMPLE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}

_TEXT_MULTI = {"SH", "LO", "UC"}  # charset-dependent, backslash-separated
_TEXT_SINGLE = {"ST", "LT", "UT"}  # charset-dependent, one value
_ASCII_MULTI = {"AS", "CS", "DA", "DT", "TM"}
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
_STRUCT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}


class _Fallback(Exception):
    """The lean path cannot encode this element; use pydicom's encoder."""


def _strings(raw: bytes, codec: str) -> list[str]:
    return [v.rstrip("\0 ") for v in raw.decode(codec).split("\\")]


def _lean(vr: str, raw: bytes, codec: str | None, little: bool) -> list[Any]:
    """The JSON ``Value`` array of one element, or raise ``_Fallback``."""
    if vr in _STRUCT:
        code = _STRUCT[vr]
        size = struct.calcsize(code)
        if len(raw) % size:
            raise _Fallback
        values = list(struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{code}", raw))
        return [float(v) for v in values] if vr in ("FL", "FD") else values
    if vr == "UI":
        return raw.decode("ascii").rstrip("\0 ").split("\\")
    if vr == "AE":
        return [v.strip() for v in raw.decode("ascii").split("\\")]
    if vr in _ASCII_MULTI:
        return raw.decode("ascii").rstrip("\0 ").split("\\")
    if vr == "UR":
        return [raw.decode("ascii").rstrip("\0 ")]
    if vr in ("IS", "DS"):
        texts = raw.decode("ascii").split("\\")
        try:
            return [int(t) if vr == "IS" else float(t) for t in texts]
        except ValueError:
            raise _Fallback from None
    if codec is None:
        raise _Fallback
    if vr in _TEXT_MULTI:
        return _strings(raw, codec)
    if vr in _TEXT_SINGLE:
        return [raw.decode(codec).rstrip("\0 ")]
    if vr == "PN":
        names = []
        for value in _strings(raw, codec):
            groups = value.split("=")
            while len(groups) > 1 and not groups[-1]:
                groups.pop()  # like pydicom: trailing empty component groups are dropped
            name = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                name["Ideographic"] = groups[1]
            if len(groups) > 2:
                name["Phonetic"] = groups[2]
            names.append(name)
        return names
    raise _Fallback


def _codec(ds: Dataset, inherited: str | None) -> str | None:
    """The single Python codec for the dataset's text, or None when pydicom must decode."""
    raw = ds.get_item(0x00080005)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None  # multi-valued: ISO 2022 code extensions
    return _SIMPLE_CHARSETS.get(value.strip("\0 "))


class JsonTimeout(Exception):
    """Encoding ran past its deadline."""


def to_json(ds: Dataset, bulk_uri: BulkURI, threshold: int = 1024, *, deadline: float | None = None) -> JSON:
    """Encode ``ds`` as a DICOM JSON object; binary values past ``threshold`` become BulkDataURIs.

    Past ``deadline`` (``time.monotonic()``) it raises ``JsonTimeout``.
    """
    clock = _Clock(deadline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values it still decodes
        return _to_json(ds, bulk_uri, threshold, (), "ascii", clock)


class _Clock:
    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.deadline is not None and self.ticks % 256 == 0 and time.monotonic() > self.deadline:
            raise JsonTimeout


def _to_json(
    ds: Dataset, bulk_uri: BulkURI, threshold: int, path: tuple[str, ...], codec: str | None, clock: _Clock
) -> JSON:
    codec = _codec(ds, codec)
    out: JSON = {}
    for elem in raw_elements(ds):
        clock.tick()
        tag = BaseTag(elem.tag)
        if tag.element == 0 or tag.group == 0x0002:
            continue  # group lengths and file meta are not part of the data set's JSON
        key = f"{tag:08X}"
        vr = elem.VR or _dictionary_vr(tag)
        if isinstance(elem, RawDataElement) and vr not in ("SQ", "UN") and " or " not in vr:
            value = elem.value or b""
            if vr in _BINARY:  # UN never reaches here: pydicom may know its real VR
                out[key] = _binary(vr, value, bulk_uri, (*path, key), threshold)
                continue
            if not value:
                out[key] = {"vr": vr}
                continue
            try:
                values = _lean(vr, value, codec, elem.is_little_endian)
                empty = values == [""] or values == [{"Alphabetic": ""}]
                out[key] = {"vr": vr} if empty else {"vr": vr, "Value": values}
                continue
            except (_Fallback, UnicodeDecodeError):
                pass
        try:
            out[key] = _via_pydicom(ds[tag], bulk_uri, threshold, (*path, key), codec, clock)
        except JsonTimeout:
            raise
        except Exception:  # pydicom cannot decode the value: keep it visible as raw bytes
            out[key] = _binary("UN", _raw_bytes(elem), bulk_uri, (*path, key), threshold)
    return out


def raw_elements(ds: Dataset) -> Iterable[DataElement | RawDataElement]:
    """The data set's elements as read, in file order, without conversion.

    ``Dataset.elements()`` sorts the tags and looks each one up again, which is a
    third of the encoding time for a small header; the element store is read directly.
    """
    store = getattr(ds, "_dict", None)
    return store.values() if isinstance(store, dict) else ds.elements()


def _raw_bytes(elem: DataElement | RawDataElement) -> bytes:
    value = elem.value
    return value if isinstance(value, bytes) else b""


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _binary(vr: str, value: bytes, bulk_uri: BulkURI, path: tuple[str, ...], threshold: int) -> JSON:
    if not value:
        return {"vr": vr}
    # Same rule as pydicom: compare against the base64-encoded length.
    if len(value) > (threshold // 4) * 3:
        return {"vr": vr, "BulkDataURI": bulk_uri(path)}
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def _via_pydicom(
    elem: DataElement,
    bulk_uri: BulkURI,
    threshold: int,
    path: tuple[str, ...],
    codec: str | None,
    clock: _Clock,
) -> JSON:
    if elem.VR == "SQ":
        items = [
            _to_json(item, bulk_uri, threshold, (*path, str(i)), codec, clock)
            for i, item in enumerate(elem.value)
        ]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    encoded: JSON = elem.to_json_dict(lambda _e: bulk_uri(path), threshold)
    return encoded


REPLACEMENT = "\ufffd"


def without_nul(value: Any) -> Any:
    """The DICOM JSON with every NUL in a string replaced by U+FFFD (CONFORMANCE.md).

    NUL is no character of any text VR (PS3.5 §6.1; it may only pad a UI or binary value,
    and trailing padding is already stripped), and PostgreSQL text and jsonb cannot hold it.
    The stored object keeps its bytes; only the indexed values and the metadata change."""
    if isinstance(value, str):
        return value.replace("\0", REPLACEMENT)
    if isinstance(value, dict):
        return {k: without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


_BULK_KEY = b'"BulkDataURI"'
# After the key: optional JSON whitespace (RFC 8259 §2), the colon, whitespace, the string's
# opening quote, and a path (a value that is already an absolute URI is left alone).
_BULK_VALUE = re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"(?=/)')


def absolute_bulkdata(data: bytes, base: str) -> bytes:
    """DICOM JSON text (an object or an array of them) with ``base`` put before every BulkDataURI
    that is a path, as ingest stores them (``resources.bulkdata_base``).

    Relies on JSON's grammar and on PS3.18 Annex F, not on how the text was printed: any
    whitespace around the colon is kept as it is, and since an object key in DICOM JSON is a
    tag or one of the names of F.2 (``vr``, ``Value``, ``BulkDataURI``, ...), never a value,
    and a quote inside a string is always escaped, ``"BulkDataURI"`` followed by a colon is
    that key and nothing else.  ``base`` is JSON-escaped, so the result is valid JSON whatever
    it holds.  One pass over bytes: as fast as a plain replace (a study's metadata streams
    thousands of instances).
    """
    prefix = orjson.dumps(base)[1:-1]
    pieces = data.split(_BULK_KEY)
    for k in range(1, len(pieces)):
        piece = pieces[k]
        found = _BULK_VALUE.match(piece)
        if found is not None:
            end = found.end()
            pieces[k] = b"".join((piece[:end], prefix, piece[end:]))
    return _BULK_KEY.join(pieces)
