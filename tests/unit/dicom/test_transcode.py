"""transcode.py against real data: every image in pydicom's bundled corpus that is not already
Explicit VR Little Endian, compressed frames decoded one at a time, and HTJ2K codestreams made
with OpenJPH (pydicom's corpus has none)."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import compress, pack_bits
from pydicom.uid import (
    HTJ2K,
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomweb_server.dicom.transcode import (
    PixelInfo,
    TranscodeError,
    can_transcode,
    decodable_syntaxes,
    decode_frame,
    native_frame_length,
    split_frames,
    to_explicit_le,
    to_transfer_syntax,
)
from dicomweb_server.dicom.transfer_syntaxes import (
    COMPRESSED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from tests.support.testdata import bundled, corpus, meta_end, part10, with_meta_transfer_syntax

WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
# Changed on purpose when pixel data is decoded (colour space, encapsulation tables).
DECODE_CHANGES = {0x00280004, 0x00280006, 0x7FE00001, 0x7FE00002, 0x7FE00010}


def read(data: bytes | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus has invalid values on purpose
        return dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


def pixels(ds: Dataset) -> np.ndarray[Any, Any] | None:
    """pydicom's own decode, or None when pydicom cannot decode the pixel data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception:
        return None


def _classify() -> tuple[list[Path], list[Path]]:
    """Corpus images not already Explicit VR LE: (pydicom decodes them, pydicom does not)."""
    decodes, fails = [], []
    for path in corpus():
        try:
            ds = read(path)
        except Exception:
            continue  # not a Part 10 file
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" not in ds or syntax in (None, ExplicitVRLittleEndian):
            continue
        if not ds.get("SOPClassUID") and not ds.file_meta.get("MediaStorageSOPClassUID"):
            continue  # no valid PS3.10 file can be written for it (never stored by STOW either)
        (decodes if pixels(ds) is not None else fails).append(path)
    return decodes, fails


DECODES, FAILS = _classify()
COMPRESSED_FILES = [p for p in DECODES if read(p).file_meta.TransferSyntaxUID.is_compressed]


def test_the_corpus_covers_every_source_kind() -> None:
    syntaxes = {str(read(p).file_meta.TransferSyntaxUID) for p in DECODES}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"} <= syntaxes
    assert sorted(p.name for p in FAILS) == ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"]


# to_explicit_le -----------------------------------------------------------------------


def meta_is_well_formed(data: bytes) -> bool:
    """PS3.10 §7.1: the group length covers exactly the group 0002 elements (explicit VR LE)."""
    end, pos = meta_end(data), 144
    while pos < end:
        group = int.from_bytes(data[pos : pos + 2], "little")
        vr = data[pos + 4 : pos + 6]
        if group != 2:
            return False
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos == end and int.from_bytes(data[end : end + 2], "little") != 2


def same_value(src: Any, out: Any, vr: str, big_endian: bool) -> bool:
    if vr in WORD_SIZE and isinstance(src, bytes):
        size = WORD_SIZE[vr]
        count = len(src) // size
        order = ">" if big_endian else "<"
        return bool(
            np.array_equal(
                np.frombuffer(src, f"{order}u{size}", count), np.frombuffer(out, f"<u{size}", count)
            )
        )
    return bool(src == out)


@pytest.mark.parametrize("path", DECODES, ids=lambda p: p.name)
def test_to_explicit_le_keeps_pixels_and_attributes(path: Path) -> None:
    source = read(path)
    big_endian = source.file_meta.TransferSyntaxUID == EXPLICIT_VR_BIG_ENDIAN
    out = to_explicit_le(path.read_bytes())
    result = read(out)
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out[:128] == b"\0" * 128 and out[128:132] == b"DICM"
    assert meta_is_well_formed(out)
    assert result.file_meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
    expected = pixels(source)
    assert expected is not None
    # pydicom decodes YCbCr JPEG to RGB, so the native copy is RGB too (and says so).
    assert np.array_equal(result.pixel_array, expected)
    if source.get("SamplesPerPixel", 1) > 1:
        assert result.PhotometricInterpretation in ("RGB", "YBR_FULL", "YBR_FULL_422")
        assert result.PlanarConfiguration == 0 or not source.file_meta.TransferSyntaxUID.is_compressed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for elem in source:
            if elem.tag in DECODE_CHANGES or elem.tag.is_private or elem.tag.element == 0:
                continue
            assert same_value(elem.value, result[elem.tag].value, elem.VR, big_endian), elem.keyword


@pytest.mark.parametrize("path", FAILS, ids=lambda p: p.name)
def test_pixel_data_pydicom_cannot_decode_is_a_transcode_error(path: Path) -> None:
    with pytest.raises(TranscodeError, match="cannot decode"):
        to_explicit_le(path.read_bytes())


def test_explicit_le_comes_back_unchanged() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    assert to_explicit_le(data) is data


@pytest.mark.parametrize(
    "name",
    ["MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "CT_small.dcm"],
)
def test_implicit_vr_little_endian_target(name: str) -> None:
    path = bundled(name)
    out = to_transfer_syntax(path.read_bytes(), IMPLICIT_VR_LITTLE_ENDIAN)
    result = read(out)
    assert result.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(result.pixel_array, pixels(read(path)))
    assert result.PatientName == read(path).PatientName


def test_jpeg_lossless_process_14_any_predictor() -> None:
    """1.2.840.10008.1.2.4.57: an SV1 stream is a valid process 14 stream; the corpus has only .70."""
    path = bundled("SC_rgb_jpeg_gdcm.dcm")
    data = with_meta_transfer_syntax(path.read_bytes(), JPEGLossless)
    assert np.array_equal(read(to_explicit_le(data)).pixel_array, pixels(read(path)))


@pytest.mark.parametrize("data", [b"", b"not DICOM at all", b"\0" * 128 + b"DICM" + b"\xff" * 40])
def test_not_dicom_is_a_transcode_error(data: bytes) -> None:
    with pytest.raises(TranscodeError):
        to_explicit_le(data)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "examples_ybr_color.dcm", "MR_small_implicit.dcm"],
)
@pytest.mark.parametrize("cut", [50, 1000])
def test_truncated_instance_is_a_transcode_error(name: str, cut: int) -> None:
    """pydicom reads a file cut short without complaint; the result must not lose pixels silently."""
    data = bundled(name).read_bytes()[:-cut]
    with pytest.raises(TranscodeError, match="truncated"):
        to_explicit_le(data)
    with pytest.raises(TranscodeError, match="truncated"):
        split_frames(data, as_stored=False)


def test_unsupported_target_is_a_transcode_error() -> None:
    with pytest.raises(TranscodeError, match="cannot convert"):
        to_transfer_syntax(bundled("MR_small_RLE.dcm").read_bytes(), JPEG2000Lossless)


# can_transcode ------------------------------------------------------------------------


def test_every_compressed_syntax_with_a_pydicom_decoder_decodes_here() -> None:
    """The pylibjpeg plugins are installed for all of them, HTJ2K included (OpenJPEG >= 2.5)."""
    assert decodable_syntaxes() == set(COMPRESSED)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.50", True),  # as stored
        ("1.2.840.10008.1.2.4.50", EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.57", EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.201", EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.203", EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.5", EXPLICIT_VR_LITTLE_ENDIAN, True),
        (EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.1.99", EXPLICIT_VR_LITTLE_ENDIAN, True),
        (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, True),
        (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.90", IMPLICIT_VR_LITTLE_ENDIAN, True),
        ("1.2.840.10008.1.2.4.100", EXPLICIT_VR_LITTLE_ENDIAN, False),  # MPEG2 video
        ("1.2.840.10008.1.2.4.92", EXPLICIT_VR_LITTLE_ENDIAN, False),  # JPIP referenced
        ("1.2.3.4", EXPLICIT_VR_LITTLE_ENDIAN, False),
        (EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.50", False),  # no encoding
        (EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, False),
    ],
)
def test_can_transcode(source: str, target: str, expected: bool) -> None:
    assert can_transcode(source, target) is expected


# HTJ2K: codestreams made with OpenJPH's ojph_compress -reversible true ------------------------

# 16 x 12, 12-bit unsigned, value (37 x + 91 y) mod 4096
HTJ2K_GRAY = base64.b64decode(
    "/0//UQApQAAAAAAQAAAADAAAAAAAAAAAAAAAEAAAAAwAAAAAAAAAAAABCwEB/1AACAACAAAACP9SAAwAAgABAAUEBEAB/1wAEy"
    "BweHiAeHiAeHiAeHh4cHB4/2QAFgABT3BlbkpQSCBWZXIgMC45LjAu/5AACgAAAAAAegAB/5PAATC5+wMHdAAAwACaAATAov4C"
    "B3QAFP4Ch3QAwACaAATAUFABgnQAcfwAAjQAwACpgAFWJBLpoEIxAnYAmDFjxvzAMYG+tgDAAVkABaQIgiAI8ueKenCCdwC0NB"
    "qNRqPR/voIQHv2IQHsugD/2Q=="
)
# 16 x 12 RGB, 8-bit, (16 x, 20 y, 8 (x + y)) mod 256, reversible colour transform
HTJ2K_RGB = base64.b64decode(
    "/0//UQAvQAAAAAAQAAAADAAAAAAAAAAAAAAAEAAAAAwAAAAAAAAAAAADBwEBBwEBBwEB/1AACAACAAAABf9SAAwAAgABAQUEBE"
    "AB/1wAEyBYYGBoYGBoYGBoYGBgWFhg/2QAFgABT3BlbkpQSCBWZXIgMC45LjAu/5AACgAAAAABHwAB/5PACUDhAId0AMAJQPcA"
    "x3QAwAlA8QDHdAAAAADABLABKOwAh3QAzAEHdADABLABKJABB3QAzQEHdADABLABKCIBh3QAVQGHdADABNABINb+AAJ0AO0KMw"
    "DABNABIAjyAIJ0APYKMwDABNABIBDIAQJ0AKoSMwDABPABUqr6oyPCdQA0TdPAAAG+tgDABUQAVIBCiKACMAJ2AHVd18AAAb62"
    "AMAFTABVAIZh/KAiMIJ2ANlsNvvAEIG+tgDACqgBWpIk/eeAp6dCdwDWzMzM/vpye/fJ7LgAwAqYAVq2beeAp6dCdwD37u7u/v"
    "pye/fJ7LgAwAqoAWgA7u7u54Cnp8J3AOc555xz/voAAHv2AAHsugD/2Q=="
)
_Y, _X = np.mgrid[0:12, 0:16]
HTJ2K_GRAY_PIXELS = ((_X * 37 + _Y * 91) % 4096).astype(np.uint16)
HTJ2K_RGB_PIXELS = np.stack([(_X * 16) % 256, (_Y * 20) % 256, ((_X + _Y) * 8) % 256], -1).astype(np.uint8)


def image_dataset(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def htj2k(codestream: bytes, syntax: str, rgb: bool) -> bytes:
    ds = image_dataset(
        Rows=12,
        Columns=16,
        SamplesPerPixel=3 if rgb else 1,
        PhotometricInterpretation="YBR_RCT" if rgb else "MONOCHROME2",
        BitsAllocated=8 if rgb else 16,
        BitsStored=8 if rgb else 12,
        HighBit=7 if rgb else 11,
        PixelRepresentation=0,
        PixelData=encapsulate([codestream]),
    )
    if rgb:
        ds.PlanarConfiguration = 0
    ds["PixelData"].VR = "OB"
    return part10(ds, syntax)


@pytest.mark.parametrize("syntax", [HTJ2KLossless, HTJ2K])
@pytest.mark.parametrize("rgb", [False, True], ids=["gray16", "rgb8"])
def test_htj2k_decodes(syntax: str, rgb: bool) -> None:
    codestream, expected = (HTJ2K_RGB, HTJ2K_RGB_PIXELS) if rgb else (HTJ2K_GRAY, HTJ2K_GRAY_PIXELS)
    result = read(to_explicit_le(htj2k(codestream, syntax, rgb)))
    assert np.array_equal(result.pixel_array, expected)
    assert result.PhotometricInterpretation == ("RGB" if rgb else "MONOCHROME2")
    info = PixelInfo(
        12,
        16,
        3 if rgb else 1,
        8 if rgb else 16,
        8 if rgb else 12,
        0,
        "YBR_RCT" if rgb else "MONOCHROME2",
        0,
        1,
    )
    frame = decode_frame(codestream, syntax, info)
    assert frame == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    assert len(frame) == native_frame_length(info)


# decode_frame -------------------------------------------------------------------------------


def pixel_json(ds: Dataset) -> dict[str, Any]:
    """The group 0028 attributes as DICOM JSON, as the index keeps them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.group_dataset(0x0028).to_json_dict()  # type: ignore[no-any-return]


def signed_j2k_multiframe() -> bytes:
    """Three 16-bit signed frames, JPEG 2000 lossless: negative values survive frame by frame."""
    base = read(bundled("MR_small.dcm")).pixel_array.astype(np.int16)
    frames = np.stack([base, (-base).astype(np.int16), (base // 3).astype(np.int16)])
    ds = image_dataset(
        Rows=64,
        Columns=64,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        PixelRepresentation=1,
        NumberOfFrames=3,
    )
    ds.file_meta = Dataset()  # type: ignore[assignment]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    compress(ds, JPEG2000Lossless, frames)
    return part10(ds, JPEG2000Lossless)


SIGNED_J2K = signed_j2k_multiframe()


def frame_cases() -> list[Any]:
    cases = [pytest.param(p.read_bytes(), id=p.name) for p in COMPRESSED_FILES]
    return [*cases, pytest.param(SIGNED_J2K, id="signed-j2k-3-frames")]


@pytest.mark.parametrize("data", frame_cases())
def test_decode_frame_matches_pydicom_frame_by_frame(data: bytes) -> None:
    ds = read(data)
    info = PixelInfo.from_json(pixel_json(ds))
    expected = pixels(ds)
    assert expected is not None
    if info.number_of_frames == 1:
        expected = expected[np.newaxis]
    frames = list(generate_frames(ds.PixelData, number_of_frames=info.number_of_frames))
    assert len(frames) == info.number_of_frames == len(expected)
    for frame, want in zip(frames, expected, strict=True):
        got = decode_frame(frame, ds.file_meta.TransferSyntaxUID, info)
        assert got == want.astype(want.dtype.newbyteorder("<")).tobytes()


def test_decode_frame_agrees_with_to_explicit_le() -> None:
    """The frames of the transcoded instance are the decoded frames, byte for byte."""
    data = bundled("examples_ybr_color.dcm").read_bytes()  # 30 frames, YBR_FULL_422 JPEG -> RGB
    ds = read(data)
    info = PixelInfo.from_json(pixel_json(ds))
    native = read(to_explicit_le(data)).PixelData
    length = len(native) // info.number_of_frames
    for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=info.number_of_frames)):
        assert (
            decode_frame(frame, ds.file_meta.TransferSyntaxUID, info) == native[i * length : (i + 1) * length]
        )


def test_decode_frame_native_little_endian_is_unchanged() -> None:
    info = PixelInfo(2, 2, 1, 16, 16, 0, "MONOCHROME2", None, 1)
    assert decode_frame(b"\1\0\2\0\3\0\4\0", EXPLICIT_VR_LITTLE_ENDIAN, info) == b"\1\0\2\0\3\0\4\0"


@pytest.mark.parametrize(
    ("frame", "syntax"),
    [
        (b"\xff\xd8 not a JPEG stream", "1.2.840.10008.1.2.4.50"),
        (b"\0" * 64, "1.2.840.10008.1.2.4.90"),
        (b"\0" * 8, EXPLICIT_VR_BIG_ENDIAN),
        (b"\0" * 8, "1.2.840.10008.1.2.4.100"),
    ],
)
def test_decode_frame_failures_are_transcode_errors(frame: bytes, syntax: str) -> None:
    with pytest.raises(TranscodeError):
        decode_frame(frame, syntax, PixelInfo(2, 2, 1, 16, 16, 0, "MONOCHROME2", None, 1))


# PixelInfo and native_frame_length --------------------------------------------------------------


def test_pixel_info_from_json_takes_is_values_as_strings_and_defaults() -> None:
    meta = {
        "00280010": {"vr": "US", "Value": [512]},
        "00280011": {"vr": "US", "Value": [256]},
        "00280100": {"vr": "US", "Value": [16]},
        "00280008": {"vr": "IS", "Value": ["7"]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME1"]},
        "00280006": {"vr": "US"},
    }
    assert PixelInfo.from_json(meta) == PixelInfo(512, 256, 1, 16, 16, 0, "MONOCHROME1", None, 7)


@pytest.mark.parametrize(
    "meta",
    [
        {"00280011": {"vr": "US", "Value": [2]}, "00280100": {"vr": "US", "Value": [8]}},
        {
            "00280010": {"vr": "US", "Value": [2]},
            "00280011": {"vr": "US"},
            "00280100": {"vr": "US", "Value": [8]},
        },
        {
            "00280010": {"vr": "US", "Value": [2]},
            "00280011": {"vr": "US", "Value": [2]},
            "00280100": {"vr": "US", "Value": [8]},
            "00280008": {"vr": "IS", "Value": ["1A"]},
        },
    ],
)
def test_pixel_info_from_json_rejects_non_images(meta: dict[str, Any]) -> None:
    with pytest.raises(TranscodeError):
        PixelInfo.from_json(meta)


@pytest.mark.parametrize(
    ("info", "length"),
    [
        (PixelInfo(512, 512, 1, 16, 12, 0, "MONOCHROME2", None, 10), 524288),
        (PixelInfo(3, 3, 3, 8, 8, 0, "RGB", 0, 1), 27),
        (PixelInfo(100, 100, 3, 8, 8, 0, "YBR_FULL_422", 0, 1), 20000),  # PS3.3 C.7.6.3.1.2
        (PixelInfo(10, 10, 1, 32, 32, 0, "MONOCHROME2", None, 15), 400),
        (PixelInfo(512, 512, 1, 1, 1, 0, "MONOCHROME2", None, 1), 32768),
        (PixelInfo(3, 3, 1, 1, 1, 0, "MONOCHROME2", None, 1), 2),  # 9 bits
    ],
)
def test_native_frame_length(info: PixelInfo, length: int) -> None:
    assert native_frame_length(info) == length


# split_frames -------------------------------------------------------------------------------------


def test_split_frames_compressed_as_stored_and_decoded() -> None:
    data = bundled("SC_rgb_rle_16bit_2frame.dcm").read_bytes()
    ds = read(data)
    assert split_frames(data, as_stored=True) == list(generate_frames(ds.PixelData, number_of_frames=2))
    decoded = np.stack(
        [np.frombuffer(f, "<u2").reshape(100, 100, 3) for f in split_frames(data, as_stored=False)]
    )
    assert np.array_equal(decoded, ds.pixel_array)


def test_split_frames_big_endian_gives_little_endian_frames() -> None:
    big = split_frames(bundled("rtdose_expb.dcm").read_bytes(), as_stored=True)
    little = read(bundled("rtdose.dcm")).pixel_array
    assert np.array_equal(np.stack([np.frombuffer(f, "<u4").reshape(10, 10) for f in big]), little)


def test_split_frames_single_bit_frames_each_start_on_a_byte() -> None:
    """PS3.5 §8.1.1 packs 1-bit frames back to back: 5 x 5 = 25 bits never end on a byte."""
    bits = np.random.default_rng(7).integers(0, 2, (3, 5, 5), dtype=np.uint8)
    ds = image_dataset(
        Rows=5,
        Columns=5,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=1,
        BitsStored=1,
        HighBit=0,
        PixelRepresentation=0,
        NumberOfFrames=3,
        PixelData=pack_bits(bits),
    )
    ds["PixelData"].VR = "OB"
    frames = split_frames(part10(ds), as_stored=True)
    assert frames == [pack_bits(frame, pad=False) for frame in bits]
    assert all(len(f) == 4 for f in frames)


@pytest.mark.parametrize("name", ["rtplan.dcm", "MR_truncated.dcm"])
def test_split_frames_without_usable_pixel_data_is_a_transcode_error(name: str) -> None:
    with pytest.raises(TranscodeError):
        split_frames(bundled(name).read_bytes(), as_stored=False)
