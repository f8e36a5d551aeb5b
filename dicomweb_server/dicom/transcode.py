"""Transfer syntax conversion for WADO-RS: pure, bytes in, bytes out.

PS3.18 §8.7.3.5 lets a user agent ask for an instance, or for frames, in a
transfer syntax other than the stored one; the origin server converts when it
can and answers 406 when it cannot.  Here the conversion is always towards a
native (uncompressed) little endian syntax: PS3.5 §10.1 Explicit VR Little
Endian, which every DICOMweb client accepts, and Implicit VR Little Endian.
Compressed pixel data (PS3.5 Annex A.4) is decoded with pydicom's decoders and
the installed pylibjpeg plugins; which syntaxes those decode is asked of the
plugins at run time, never assumed.

Library exceptions never escape: anything pydicom, numpy or a codec raises
becomes a ``TranscodeError``.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_nr_frames, pack_bits
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from dicomweb_server.dicom.dicom_json import raw_elements
from dicomweb_server.dicom.transfer_syntaxes import (
    COMPRESSED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE,
)

# Native little endian (deflated too): a frame's bytes are already what PS3.18 octet-stream frames carry.
_NATIVE_LITTLE_ENDIAN = NATIVE - {EXPLICIT_VR_BIG_ENDIAN}

# The syntaxes this module writes (PS3.18 §8.7.3.5.2: Explicit VR LE is the default).
TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})

# PS3.5 §7.3 / Table 6.2-1: binary VRs whose values are words of this many bytes.
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian
# PS3.5 §A.4: tables that only describe encapsulated pixel data.
_ENCAPSULATION_ONLY = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")


class TranscodeError(Exception):
    """The requested transfer syntax cannot be produced, or the pixel data does not decode."""


@cache
def decodable_syntaxes() -> frozenset[str]:
    """The compressed syntaxes whose pydicom decoder has a working plugin installed."""
    return frozenset(uid for uid in COMPRESSED if get_decoder(uid).is_available)


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """True when ``to_transfer_syntax(data, target_ts)`` can convert an instance stored as ``source_ts``."""
    if source_ts == target_ts:
        return True
    return target_ts in TARGETS and (source_ts in NATIVE or source_ts in decodable_syntaxes())


def to_explicit_le(data: bytes) -> bytes:
    """A PS3.10 file re-encoded in Explicit VR Little Endian, pixel data decompressed."""
    return to_transfer_syntax(data, EXPLICIT_VR_LITTLE_ENDIAN)


def to_transfer_syntax(data: bytes, target_ts: str) -> bytes:
    """A PS3.10 file re-encoded in ``target_ts`` (one of ``TARGETS``).

    A file already in ``target_ts`` comes back unchanged.  Otherwise the result has
    a zeroed preamble, a rewritten File Meta Information (PS3.10 §7.1) and native
    pixel data; compressed colour data is decoded to RGB, as pydicom's
    ``Dataset.decompress()`` does, with Photometric Interpretation updated to match.
    Bits Allocated, Pixel Representation and the SOP Instance UID are kept.
    """
    with _library_errors("cannot read the instance"):
        ds = _read(data)
        source = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if source == target_ts:
        return data
    if not can_transcode(source, target_ts):
        raise TranscodeError(f"cannot convert transfer syntax {source or '(none)'} to {target_ts}")
    with _library_errors("cannot decode the pixel data"):
        _materialize(ds)
        if source == EXPLICIT_VR_BIG_ENDIAN:
            _swap_words(ds)
        if UID(source).is_compressed or source == EXPLICIT_VR_BIG_ENDIAN:
            _set_native_pixels(ds, as_rgb=UID(source).is_compressed)
    with _library_errors("cannot encode the instance"):
        return _write(ds, target_ts)


@contextmanager
def _library_errors(what: str) -> Iterator[None]:
    """Silence pydicom's warnings about data it still handles; turn its exceptions into ours."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except TranscodeError:
        raise
    except Exception as exc:  # pydicom, numpy and the codecs raise many types on bad data
        raise TranscodeError(what) from exc  # the library's own words stay in the chain, for the logs


def _read(data: bytes) -> Dataset:
    """A PS3.10 file, refused when cut short.

    pydicom drops an undefined-length element that reaches the end of the data
    (with a warning) and keeps a defined-length value cut short (without one).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = dcmread(io.BytesIO(data))
    if any(str(w.message).startswith("End of file reached") for w in caught):
        raise TranscodeError("the data set is truncated: a sequence or pixel data has no end")
    _check_complete(ds)
    return ds


def _check_complete(ds: Dataset) -> None:
    """The raw top-level values are as long as their headers say; encapsulated items are whole."""
    for elem in raw_elements(ds):
        if not isinstance(elem, RawDataElement) or elem.value is None:
            continue
        if elem.length != _UNDEFINED_LENGTH and len(elem.value) < elem.length:
            raise TranscodeError(
                f"the data set is truncated in ({elem.tag.group:04X},{elem.tag.element:04X})"
            )
        if elem.length == _UNDEFINED_LENGTH and elem.tag == _PIXEL_DATA and not _items_complete(elem.value):
            raise TranscodeError("the encapsulated pixel data is truncated")


def _items_complete(value: bytes) -> bool:
    """PS3.5 §A.4: encapsulated pixel data is whole items, (FFFE,E000) tag and 4-byte length each."""
    pos = 0
    while pos + 8 <= len(value):
        if value[pos : pos + 4] != _ITEM_TAG:
            return False
        pos += 8 + int.from_bytes(value[pos + 4 : pos + 8], "little")
    return pos == len(value)


def _materialize(ds: Dataset) -> None:
    """Parse every raw element (nested ones too) and give it a definite VR.

    pydicom writes raw elements back as they were read, VR included, when the
    data set's declared encoding matches the output; a file whose body is not
    encoded as its meta says (implicit VR under an explicit syntax) would then be
    written with no VR at all.  Parsing looks the VR up in the data dictionary.
    """
    ds.walk(lambda _ds, _elem: None)
    correct_ambiguous_vr(ds, True)


def _swap_words(ds: Dataset) -> None:
    """PS3.5 §7.3: OW/OF/OL/OD/OV values of a big endian data set, to little endian.

    pydicom converts numeric VRs when it reads them but leaves binary ones as read
    (and does not swap them when writing).  Pixel data is left to the decoder.
    """

    def swap(_ds: Dataset, elem: Any) -> None:
        size = _WORD_SIZE.get(str(elem.VR))
        if size and elem.keyword not in _PIXEL_KEYWORDS and isinstance(elem.value, bytes):
            usable = len(elem.value) - len(elem.value) % size
            words = np.frombuffer(elem.value, dtype=f">u{size}", count=usable // size)
            elem.value = words.astype(f"<u{size}").tobytes() + elem.value[usable:]

    ds.walk(swap)


def _set_native_pixels(ds: Dataset, *, as_rgb: bool) -> None:
    """Replace the pixel data element's value with native little endian frames.

    Frames are decoded one at a time (PS3.5 §8.2: one fragment run per frame).
    Unused high bits are kept as stored; a codec that returns a narrower container
    than Bits Allocated (JPEG 2000 and JPEG-LS do for 8-bit precision) is widened.
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        return  # nothing to decode: the rest of the data set still converts
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    count = int(get_nr_frames(ds, warn=False))
    bits_allocated = int(ds.get("BitsAllocated", 0)) if keyword == "PixelData" else 0
    frames = decoder.iter_array(ds, as_rgb=as_rgb, correct_unused_bits=False, allow_excess_frames=False)
    packed: list[np.ndarray[Any, Any]] = []  # single-bit frames are packed across frame boundaries
    chunks: list[bytes] = []
    properties: dict[str, str | int] = {}
    for arr, frame_properties in itertools.islice(frames, count):
        if bits_allocated == 1:
            packed.append(arr.ravel())
        else:
            chunks.append(_stored(arr, bits_allocated).tobytes())  # keep one decoded frame at a time
        properties = frame_properties
    if len(packed) + len(chunks) != count:
        raise TranscodeError(f"the pixel data holds fewer frames than Number of Frames ({count})")
    value = pack_bits(np.concatenate(packed), pad=False) if packed else b"".join(chunks)
    elem = ds[keyword]
    elem.value = value + b"\0" * (len(value) % 2)
    elem.is_undefined_length = False
    if keyword == "PixelData":
        elem.VR = "OB" if bits_allocated <= 8 else "OW"
    if "photometric_interpretation" in properties:
        ds.PhotometricInterpretation = properties["photometric_interpretation"]
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0  # pydicom's arrays are colour-by-pixel
    for name in _ENCAPSULATION_ONLY:
        if name in ds:
            delattr(ds, name)


def _native_bytes(arr: np.ndarray[Any, Any], bits_allocated: int) -> bytes:
    """One frame as PS3.5 §8.1.1 native data: little endian, Bits Allocated per sample, bits packed for 1."""
    if bits_allocated == 1:
        return pack_bits(arr.ravel(), pad=False)
    return _stored(arr, bits_allocated).tobytes()


def _stored(arr: np.ndarray[Any, Any], bits_allocated: int) -> np.ndarray[Any, Any]:
    """``arr`` in the little endian dtype of its stored samples (Bits Allocated wide for integers)."""
    dtype = arr.dtype
    if dtype.kind in "ui" and bits_allocated:
        if dtype.itemsize * 8 > bits_allocated:
            raise TranscodeError(
                f"decoded samples are {dtype.itemsize * 8} bits, Bits Allocated is {bits_allocated}"
            )
        dtype = np.dtype(f"{dtype.kind}{bits_allocated // 8}")
    return arr.astype(dtype.newbyteorder("<"), copy=False)


def _write(ds: Dataset, target_ts: str) -> bytes:
    """PS3.10 §7: zeroed preamble, 'DICM', File Meta Information (group length recomputed), data set."""
    meta = ds.file_meta
    meta.TransferSyntaxUID = UID(target_ts)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # the implementation that wrote this file
    if "ImplementationVersionName" in meta:
        del meta.ImplementationVersionName
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@dataclass(frozen=True)
class PixelInfo:
    """The PS3.3 §C.7.6.3 Image Pixel attributes needed to decode one frame alone."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int | None
    number_of_frames: int

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> PixelInfo:
        """From a PS3.18 Annex F DICOM JSON object, as kept in the index at ingest."""
        rows, columns, bits_allocated = (_json_int(meta, tag) for tag in ("00280010", "00280011", "00280100"))
        if rows is None or columns is None or bits_allocated is None:
            raise TranscodeError("not an image: Rows, Columns or Bits Allocated is missing")
        samples = _json_int(meta, "00280002") or 1
        photometric = _json_value(meta, "00280004")
        return cls(
            rows=rows,
            columns=columns,
            samples_per_pixel=samples,
            bits_allocated=bits_allocated,
            bits_stored=_json_int(meta, "00280101") or bits_allocated,
            pixel_representation=_json_int(meta, "00280103") or 0,
            photometric_interpretation=str(photometric or ("RGB" if samples > 1 else "MONOCHROME2")).strip(),
            planar_configuration=_json_int(meta, "00280006"),
            number_of_frames=_json_int(meta, "00280008") or 1,
        )


def _json_value(meta: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, None when absent or empty."""
    values = (meta.get(tag) or {}).get("Value") or [None]
    return values[0]


def _json_int(meta: Mapping[str, Any], tag: str) -> int | None:
    """An integer attribute; IS values may come as JSON numbers or strings (PS3.18 §F.2.3)."""
    value = _json_value(meta, tag)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise TranscodeError(f"({tag[:4]},{tag[4:]}) is not an integer: {value!r}") from exc


def native_frame_length(info: PixelInfo) -> int:
    """Bytes of one native frame (PS3.5 §8.1.1): packed bits for Bits Allocated 1, rounded up.

    Native YBR_FULL_422 stores two samples per pixel (PS3.3 §C.7.6.3.1.2).
    """
    samples = 2 if info.photometric_interpretation == "YBR_FULL_422" else info.samples_per_pixel
    bits = info.rows * info.columns * samples * info.bits_allocated
    return (bits + 7) // 8


def decode_frame(frame: bytes, transfer_syntax: str, info: PixelInfo) -> bytes:
    """One frame's native little endian bytes, as PS3.18 §8.7.3.3.2 application/octet-stream carries them.

    ``frame`` is the frame's compressed bitstream (its fragments concatenated) or,
    for a native little endian syntax, its bytes, which come back unchanged.  The
    rest of the instance is not needed.  Samples are Bits Allocated wide, colour by
    pixel (Planar Configuration 0); YCbCr JPEG is converted to RGB and JPEG 2000
    YBR_ICT/YBR_RCT come out as RGB, as in ``to_explicit_le`` output.
    """
    if transfer_syntax in _NATIVE_LITTLE_ENDIAN:
        return bytes(frame)
    if transfer_syntax not in decodable_syntaxes():
        raise TranscodeError(f"frames in transfer syntax {transfer_syntax} cannot be decoded here")
    options: dict[str, Any] = {  # pydicom's DecodeOptions, as its Decoder.as_array takes them
        "number_of_frames": 1,
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric_interpretation,
        "planar_configuration": info.planar_configuration or 0,
        "as_rgb": True,
        "correct_unused_bits": False,
    }
    with _library_errors("cannot decode the frame"):
        arr, _ = get_decoder(transfer_syntax).as_array(encapsulate([frame]), index=0, **options)
        return _native_bytes(arr, info.bits_allocated)


def split_frames(data: bytes, as_stored: bool) -> list[bytes]:
    """Every frame of a PS3.10 file, for when its frames are not byte ranges of the stored object.

    ``as_stored`` keeps compressed frames as their bitstreams (PS3.5 §A.4: the
    fragments of each frame joined); otherwise, and always for native data, frames
    are native little endian as ``decode_frame`` returns them: big endian and
    deflated data sets are converted, and single-bit frames are packed each from
    its own first byte (PS3.5 §8.1.1 packs them across frame boundaries).
    """
    with _library_errors("cannot read the frames"):
        ds = _read(data)
        source = str(ds.file_meta.get("TransferSyntaxUID", ""))
        keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
        if keyword is None:
            raise TranscodeError("the instance has no pixel data")
        if UID(source).is_compressed:
            info = _info_of(ds)
            frames = _encapsulated_frames(ds, info.number_of_frames)
            return frames if as_stored else [decode_frame(f, source, info) for f in frames]
        if source == EXPLICIT_VR_BIG_ENDIAN:
            _set_native_pixels(ds, as_rgb=False)  # may also expand YBR_FULL_422 to YBR_FULL
        return _native_frames(ds[keyword].value, _info_of(ds))


def _info_of(ds: Dataset) -> PixelInfo:
    """The Image Pixel attributes of a data set (Float Pixel Data has no Pixel Representation)."""
    samples = int(ds.get("SamplesPerPixel", 1))
    bits_allocated = int(ds.BitsAllocated)
    planar = ds.get("PlanarConfiguration")
    return PixelInfo(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=int(ds.get("BitsStored", bits_allocated)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar_configuration=None if planar is None else int(planar),
        number_of_frames=int(get_nr_frames(ds, warn=False)),
    )


def _encapsulated_frames(ds: Dataset, count: int) -> list[bytes]:
    """The bitstream of each frame, found as pydicom finds it (offset tables, else one fragment per frame)."""
    offsets = None
    if "ExtendedOffsetTable" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = list(
        itertools.islice(
            generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets), count
        )
    )
    if len(frames) != count:
        raise TranscodeError(f"the pixel data holds {len(frames)} frames, Number of Frames says {count}")
    return frames


def _native_frames(value: bytes, info: PixelInfo) -> list[bytes]:
    """Native pixel data cut into frames of ``native_frame_length`` bytes (bit by bit when packed)."""
    count = info.number_of_frames
    if info.bits_allocated == 1:
        pixels = info.rows * info.columns * info.samples_per_pixel
        bits = np.unpackbits(np.frombuffer(value, dtype=np.uint8), bitorder="little")
        if len(bits) < pixels * count:
            raise TranscodeError("the pixel data is shorter than its frames")
        return [pack_bits(bits[i * pixels : (i + 1) * pixels], pad=False) for i in range(count)]
    length = native_frame_length(info)
    if len(value) < length * count:
        raise TranscodeError("the pixel data is shorter than its frames")
    return [bytes(value[i * length : (i + 1) * length]) for i in range(count)]
