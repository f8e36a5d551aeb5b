"""Parse and validate one STOW part's DICOM header: pure, bytes in, values out.

Only the bytes before Pixel Data are parsed, from a prefix of the part held in
memory (at most ``header_budget`` bytes, so parse time is bounded too).  A
problem with one instance is returned as a ``Failure`` carrying a PS3.18
FailureReason, never raised, so the other parts of the request still store.
"""

from __future__ import annotations

import io
import logging
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, dcmread, read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomweb_server.dicom import dicom_json, structure
from dicomweb_server.dicom.frames import UNDEFINED, PixelIndex
from dicomweb_server.dicom.index import SERIES_TAGS, STUDY_TAGS, index_values, subset
from dicomweb_server.dicom.resources import bulkdata_base, is_valid_uid
from dicomweb_server.dicom.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PROCESSING_FAILURE,
    REFUSED_OUT_OF_RESOURCES,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)
from dicomweb_server.dicom.transfer_syntaxes import DEFLATED

log = logging.getLogger(__name__)

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float, Pixel Data
PREAMBLE = 128


@dataclass(frozen=True)
class Failure:
    """One instance that was not stored: the PS3.18 FailureReason and a readable comment."""

    reason: int
    comment: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Header:
    """What ingest needs from one instance's header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    dataset: Dataset  # raw elements, converted lazily by dicom_json
    pixel_data: tuple[str, str] | None  # (tag, VR) of the (Float/Double) Pixel Data element, if any
    pixel: PixelIndex | None = None  # where its value lies in the part (not for deflated data sets)
    # Walks the rest of the part as it streams: is the data set complete? (structure.py)
    checker: structure.Checker | None = field(default=None, compare=False)


def parse_header(
    prefix: bytes,
    *,
    complete: bool,
    budget: int = 16 * 1024 * 1024,
    deadline: float | None = None,
    inflate_limit: int = 1 << 40,
) -> Header | Failure:
    """Parse a Part 10 header from the first bytes of a part.

    ``complete`` says that ``prefix`` is the whole part; otherwise the header must
    end (at Pixel Data) within ``prefix``, and a header cut short is 0xA700 (the
    caller may retry with a longer prefix).  Deflated data sets are inflated up to
    ``budget`` bytes.  Past ``deadline`` (``time.monotonic()``) the parse stops with 0xA700:
    a header of millions of tiny elements costs CPU out of proportion to its bytes.

    Before pydicom reads anything, ``structure`` walks the element headers of the
    prefix: sequences nested too deep are refused here (pydicom's reader and the
    JSON encoder recurse), and so is a structure already broken within the prefix.
    The returned ``Header.checker`` goes on walking the rest of the part.
    """
    if not prefix:
        return Failure(CANNOT_UNDERSTAND, EMPTY_COMMENT)
    if len(prefix) < PREAMBLE + 4 or prefix[PREAMBLE : PREAMBLE + 4] != b"DICM":
        return Failure(CANNOT_UNDERSTAND, NOT_PART10_COMMENT)
    fp = io.BytesIO(prefix)
    fp.seek(PREAMBLE + 4)
    stop: dict[str, Any] = {}

    seen = [0]

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        seen[0] += 1
        if deadline is not None and seen[0] % 256 == 0 and time.monotonic() > deadline:
            raise ParseTimeout
        if tag in PIXEL_DATA_TAGS:
            stop["vr"] = vr or _IMPLICIT_PIXEL_VR[tag]
            stop["tag"] = f"{tag:08X}"
            stop["length"] = length
            stop["explicit_long"] = vr is not None and vr.encode() in _LONG_VRS
            return True
        return False

    broken: Failure | None = None  # the structure is wrong: fail, naming the instance if it can be
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = _transfer_syntax(prefix, fp)
            if not is_valid_uid(ts):
                return Failure(CANNOT_UNDERSTAND, NO_TRANSFER_SYNTAX_COMMENT)
            uid = UID(ts)
            if not uid.is_transfer_syntax:
                return Failure(
                    TRANSFER_SYNTAX_NOT_SUPPORTED,
                    fit(TS_NOT_SUPPORTED_COMMENT.format(uid=ts), TS_NOT_SUPPORTED_FALLBACK),
                )
            checker = structure.checker(
                fp.tell(),
                implicit=uid.is_implicit_VR,
                little=uid.is_little_endian,
                deflated=ts == DEFLATED,
                inflate_limit=inflate_limit,
            )
            checker.deadline = deadline
            checker.feed(memoryview(prefix)[fp.tell() :])
            problem = checker.problem
            if problem is not None and (problem.depth or problem.limit):
                reason = REFUSED_OUT_OF_RESOURCES if problem.limit else CANNOT_UNDERSTAND
                return Failure(reason, problem.comment, *_naming(prefix, checker))
            if problem is None and complete:  # the whole part is here: is its data set whole?
                problem = checker.finish()
            broken = None if problem is None else Failure(CANNOT_UNDERSTAND, problem.comment)
            body: io.BytesIO = fp
            if ts == DEFLATED:
                # Inflate with a bound: never more than the header budget (decompression bombs).
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                body = io.BytesIO(inflater.decompress(prefix[fp.tell() :], budget))
                complete = complete and not inflater.unconsumed_tail
            ds = read_dataset(body, uid.is_implicit_VR, uid.is_little_endian, stop_when=at_pixels)
            if "vr" not in stop and not complete and broken is None:
                return OVER_BUDGET
            cut = _truncated(ds)  # a value of the header itself is cut short: its UIDs may be too
            if cut and broken is None:
                broken = Failure(CANNOT_UNDERSTAND, TRUNCATED_COMMENT)
            values = {kw: _text(ds, tag) for kw, tag in _REQUIRED.items()}
            pixel = None
            if "tag" in stop and body is fp:
                # pydicom leaves the file at the element's tag: its value follows the element header.
                length = stop["length"]
                offset = fp.tell() + (12 if stop["explicit_long"] else 8)
                pixel = PixelIndex(offset, None if length == UNDEFINED else length)
    except ParseTimeout:
        return _TOO_SLOW
    except Exception as exc:  # pydicom raises many types on malformed input
        if broken is not None:  # the walker already knows what is wrong
            return broken
        if not complete:  # most likely a header cut short by the prefix
            return OVER_BUDGET
        log.info("unreadable DICOM header", extra={"event": "stow_unreadable", "error": type(exc).__name__})
        return Failure(CANNOT_UNDERSTAND, UNREADABLE_COMMENT)
    sop_class, sop_uid = values["SOPClassUID"], values["SOPInstanceUID"]
    if broken is not None:
        ok = is_valid_uid(sop_class) and is_valid_uid(sop_uid) and not cut
        return replace(
            broken, sop_class_uid=sop_class if ok else None, sop_instance_uid=sop_uid if ok else None
        )
    for keyword, value in values.items():
        if not is_valid_uid(value):
            wrong = "missing" if not value else "not a valid UID"
            return Failure(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                UID_COMMENT.format(keyword=keyword, problem=wrong),
                sop_class if is_valid_uid(sop_class) else None,
                sop_uid if is_valid_uid(sop_uid) else None,
            )
    assert sop_class and sop_uid and values["StudyInstanceUID"] and values["SeriesInstanceUID"]
    return Header(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=ts,
        dataset=ds,
        pixel_data=(stop["tag"], stop["vr"]) if "tag" in stop else None,
        pixel=pixel,
        checker=checker,
    )


# Error Comments (0000,0902) are LO: at most 64 characters, so each one must say something complete
# in that space.  Templates name their fields; tests/unit/test_stow_response.py checks the worst cases.
EMPTY_COMMENT = "The part is empty"
NOT_PART10_COMMENT = "Not a DICOM PS3.10 file: no 'DICM' prefix after the preamble"
NO_TRANSFER_SYNTAX_COMMENT = "File Meta Information has no valid Transfer Syntax UID"
TS_NOT_SUPPORTED_COMMENT = "Transfer Syntax {uid} is not supported"
TS_NOT_SUPPORTED_FALLBACK = "The Transfer Syntax of the file is not supported"
TRUNCATED_COMMENT = "The DICOM data set is truncated"
UNREADABLE_COMMENT = "The DICOM header cannot be parsed"
UID_COMMENT = "{keyword} is {problem}"
METADATA_COMMENT = "Could not build the instance metadata"
OVER_BUDGET_COMMENT = "DICOM header exceeds the configured header budget"


def _naming(prefix: bytes, checker: structure.Checker) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs where the walker saw them, for a failure found before pydicom
    read the header (a sequence nested too deep); (None, None) unless both are valid."""
    if not isinstance(checker, structure.Walker):
        return None, None
    found = []
    for tag in (0x00080016, 0x00080018):
        at, length = checker.naming.get(tag, (0, 0))
        found.append(prefix[at : at + length].decode("ascii", "replace").rstrip("\0 "))
    if all(is_valid_uid(u) for u in found):
        return found[0], found[1]
    return None, None


OVER_BUDGET = Failure(REFUSED_OUT_OF_RESOURCES, OVER_BUDGET_COMMENT)
_TOO_SLOW = Failure(REFUSED_OUT_OF_RESOURCES, structure.TOO_SLOW_COMMENT)
LO_MAX = 64


def fit(text: str, fallback: str) -> str:
    """``text`` if it fits an Error Comment (LO, 64 characters), else the complete ``fallback``."""
    return text if len(text) <= LO_MAX else fallback


class ParseTimeout(Exception):
    """The header parse ran past its deadline."""


_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}


def _truncated(ds: Dataset) -> bool:
    """pydicom reads a value cut off by the end of the data without complaint: check the lengths."""
    return any(
        isinstance(elem, RawDataElement)
        and elem.length != 0xFFFFFFFF
        and elem.value is not None
        and len(elem.value) < elem.length
        for elem in dicom_json.raw_elements(ds)
    )


# PS3.5 §7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _transfer_syntax(buf: bytes, fp: io.BytesIO) -> str:
    """Read the File Meta group (PS3.10 §7.1, always Explicit VR Little Endian) and leave ``fp`` after it.

    A direct walk over group 0002 costs microseconds where pydicom's reader costs
    ~0.1 ms; files whose meta group is not well-formed explicit VR go to pydicom.
    """
    pos, ts = PREAMBLE + 4, b""
    while pos + 8 <= len(buf):
        group, element = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = buf[pos + 4 : pos + 6]
        if not vr.isalpha() or not vr.isupper():
            fp.seek(PREAMBLE + 4)
            return str(_read_file_meta_info(fp).get("TransferSyntaxUID", "")).rstrip("\0 ")
        if vr in _LONG_VRS:
            (length,), start = struct.unpack_from("<I", buf, pos + 8), pos + 12
        else:
            (length,), start = struct.unpack_from("<H", buf, pos + 6), pos + 8
        if length == 0xFFFFFFFF or start + length > len(buf):
            raise ValueError("truncated File Meta Information")
        if element == 0x0010:
            ts = buf[start : start + length]
        pos = start + length
    fp.seek(pos)
    return ts.decode("ascii").rstrip("\0 ")


_REQUIRED = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


def _text(ds: Dataset, tag: int) -> str | None:
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).rstrip("\0 ") or None


@dataclass(frozen=True)
class Description:
    """Everything the index needs from one instance's header: compact (no pydicom objects) and,
    but for ``checker`` (the part's completeness walk, dropped from the index record), picklable."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_attrs: str  # DICOM JSON text
    series_attrs: str
    metadata: str
    pixel: PixelIndex | None = None
    checker: structure.Checker | None = field(default=None, compare=False)


def describe(
    prefix: bytes,
    *,
    complete: bool,
    budget: int,
    threshold: int,
    seconds: float = 2.0,
    inflate_limit: int = 1 << 40,
) -> Description | Failure:
    """Parse a part's header and compute its DICOM JSON and index values, once, at ingest,
    within ``budget`` bytes and ``seconds`` of CPU time."""
    deadline = time.monotonic() + seconds
    parsed = parse_header(
        prefix, complete=complete, budget=budget, deadline=deadline, inflate_limit=inflate_limit
    )
    if isinstance(parsed, Failure):
        return parsed
    url = bulkdata_base(parsed.study_uid, parsed.series_uid, parsed.sop_uid)
    try:
        meta = dicom_json.to_json(
            parsed.dataset, lambda path: f"{url}/{'/'.join(path)}", threshold, deadline=deadline
        )
        if parsed.pixel_data is not None:
            tag, vr = parsed.pixel_data
            meta[tag] = {"vr": vr, "BulkDataURI": f"{url}/{tag}"}
        metadata = orjson.dumps(meta)
        if b"\\u0000" in metadata:  # PostgreSQL text and jsonb cannot hold NUL
            meta = dicom_json.without_nul(meta)
            metadata = orjson.dumps(meta)
        study, series, instance = index_values(meta)
    except dicom_json.JsonTimeout:
        return _TOO_SLOW
    except Exception as exc:  # a data set pydicom reads but cannot describe: that instance fails alone
        log.info("instance metadata failed", extra={"event": "stow_metadata", "error": type(exc).__name__})
        return Failure(PROCESSING_FAILURE, METADATA_COMMENT, parsed.sop_class_uid, parsed.sop_uid)
    instance["sop_class_uid"] = parsed.sop_class_uid
    instance["transfer_syntax_uid"] = parsed.transfer_syntax_uid
    return Description(
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        sop_uid=parsed.sop_uid,
        sop_class_uid=parsed.sop_class_uid,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        study=study,
        series=series,
        instance=instance,
        study_attrs=orjson.dumps(subset(meta, STUDY_TAGS)).decode(),
        series_attrs=orjson.dumps(subset(meta, SERIES_TAGS)).decode(),
        metadata=metadata.decode(),
        pixel=parsed.pixel,
        checker=parsed.checker,
    )


def value_at(data: bytes, path: list[str]) -> bytes | None:
    """The bytes of the value a BulkDataURI names: ``path`` alternates tags and item indexes,
    as ``dicom_json`` wrote them (``["00540016", "0", "00181072"]``).  ``data`` is the object,
    or its bytes up to Pixel Data.  None when there is no such binary value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds: Any = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            for step, name in enumerate(path):
                ds = ds[int(name)] if step % 2 else ds[int(name, 16)].value
        except Exception:  # a path that names nothing, or pydicom's many errors on malformed data
            return None
    return bytes(ds) if isinstance(ds, bytes | bytearray) and len(path) % 2 else None
