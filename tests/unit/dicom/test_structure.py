"""structure.Walker: is a data set complete?  Real files, fed in every chunking."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.dicom import structure
from dicomweb_server.dicom.transfer_syntaxes import DEFLATED
from tests.support.testdata import bundled, corpus

BROKEN = {"MR_truncated.dcm", "rtplan_truncated.dcm", "DICOMDIR-nooffset"}  # cut short, in pydicom's corpus


def walker_for(data: bytes) -> structure.Checker:
    fp = io.BytesIO(data)
    ts = dicom._transfer_syntax(data, fp)
    uid = UID(ts)
    return structure.checker(
        fp.tell(),
        implicit=uid.is_implicit_VR,
        little=uid.is_little_endian,
        deflated=ts == DEFLATED,
        inflate_limit=1 << 30,
    )


def walk(data: bytes, size: int | None = None) -> structure.Problem | None:
    w = walker_for(data)
    rest = memoryview(data)[w.seen :]
    step = size or len(rest) or 1
    for i in range(0, len(rest), step):
        w.feed(rest[i : i + step])
    return w.finish()


def part10_files() -> list[str]:
    out = []
    for path in corpus():
        data = path.read_bytes()
        if data[128:132] != b"DICM":
            continue
        try:
            UID(dicom._transfer_syntax(data, io.BytesIO(data))).is_implicit_VR  # noqa: B018
        except Exception:
            continue
        out.append(str(path))
    return out


@pytest.mark.parametrize("path", part10_files(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_pydicom_corpus_is_complete_except_the_truncated_files(path: str) -> None:
    data = Path(path).read_bytes()
    name = Path(path).name
    for size in (None, 7, 4096):
        problem = walk(data, size)
        assert (problem is not None) == (name in BROKEN), (name, size, problem)


@pytest.mark.parametrize(
    "name", ["JPEG-lossy.dcm", "CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]
)
def test_every_truncation_is_seen_in_every_chunking(name: str) -> None:
    data = bundled(name).read_bytes()
    start = walker_for(data).seen
    for cut in range(start + 1, len(data), max(1, (len(data) - start) // 150)):
        for size in (1, 13, None):
            problem = walk(data[:cut], size)
            if problem is None:  # only a cut exactly between two top-level elements is complete
                assert name != "image_dfl.dcm", cut
            assert problem is None or problem.comment.startswith(("Truncated", "Malformed")), problem


def test_jpeg_lossy_without_its_last_8_bytes() -> None:
    data = bundled("JPEG-lossy.dcm").read_bytes()
    problem = walk(data[:-8])
    assert problem is not None
    assert problem.comment == "Truncated: (7FE0,0010) ends without its sequence delimiter"
    problem = walk(data[:-9])
    assert problem is not None and "item in (7FE0,0010) lacks" in problem.comment


def explicit(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def item(value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(value) if length is None else length) + value


SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


def explicit_walk(data: bytes, size: int = 3, **limits: int) -> structure.Problem | None:
    w = structure.Walker(0, implicit=False, little=True, **limits)
    for i in range(0, len(data), size):
        w.feed(data[i : i + size])
    return w.finish()


@pytest.mark.parametrize(
    ("data", "comment"),
    [
        (explicit(0x00100010, b"PN", b"Doe^", 6), "Truncated: (0010,0010) value lacks 2 bytes"),
        (
            explicit(0x7FE00010, b"OW", b"\0" * 4, 0xFFFFFFF0),
            "Truncated: (7FE0,0010) value lacks 4294967276 bytes",
        ),
        (explicit(0x00100010, b"PN", b"Doe^")[:5], "Truncated inside an element header after (0000,0000)"),
        (
            explicit(0x7FE00010, b"OB", item(b"") + item(b"ab"), 0xFFFFFFFF),
            "Truncated: (7FE0,0010) ends without its sequence delimiter",
        ),
        (
            explicit(0x7FE00010, b"OB", item(b"") + item(b"ab", 1000), 0xFFFFFFFF),
            "Truncated: item in (7FE0,0010) lacks 998 bytes",
        ),
        (
            explicit(0x7FE00010, b"OB", item(b"") + explicit(0x00100010, b"PN", b"") + SEQ_END, 0xFFFFFFFF),
            "Malformed: (7FE0,0010) holds an element where an item must be",
        ),
        (
            explicit(0x00081115, b"SQ", item(explicit(0x00100010, b"PN", b"ab")), 0xFFFFFFFF),
            "Truncated: (0008,1115) ends without its sequence delimiter",
        ),
        (
            explicit(0x00081115, b"SQ", item(explicit(0x00100010, b"PN", b"ab"), 0xFFFFFFFF), 0xFFFFFFFF),
            "Truncated: item in (0008,1115) ends without its item delimiter",
        ),
        (
            explicit(0x00081115, b"SQ", item(explicit(0x00100010, b"PN", b"abcd"), 6)),
            "Malformed: (0010,0010) is longer than its item or sequence",
        ),
    ],
)
def test_what_is_wrong_is_said(data: bytes, comment: str) -> None:
    for size in (1, 3, len(data)):
        problem = explicit_walk(data, size)
        assert problem is not None and problem.comment == comment
        assert len(problem.comment) <= 64


def test_complete_structures_pass() -> None:
    nested = explicit(
        0x00081115,
        b"SQ",
        item(explicit(0x00100010, b"PN", b"ab")) + item(b"", 0xFFFFFFFF) + ITEM_END + SEQ_END,
        0xFFFFFFFF,
    )
    defined = explicit(0x00081115, b"SQ", item(explicit(0x00100010, b"PN", b"ab")) + item(b""))
    un = explicit(
        0x00091001,
        b"UN",
        item(struct.pack("<HHI", 0x0010, 0x0010, 2) + b"ab", 0xFFFFFFFF) + ITEM_END + SEQ_END,
        0xFFFFFFFF,
    )
    pixels = explicit(0x7FE00010, b"OB", item(b"") + item(b"ab") + SEQ_END, 0xFFFFFFFF)
    padding = explicit(0xFFFCFFFC, b"OB", b"\0" * 10)
    for data in (nested, defined, un, pixels + padding, b""):
        for size in (1, 5, 1000):
            assert explicit_walk(data, size) is None


def test_depth_limit() -> None:
    def deep(n: int) -> bytes:
        value = explicit(0x00080100, b"SH", b"X ")
        for _ in range(n):
            value = explicit(0x0040A730, b"SQ", item(value, 0xFFFFFFFF) + ITEM_END + SEQ_END, 0xFFFFFFFF)
        return value

    assert explicit_walk(deep(structure.MAX_SEQUENCE_DEPTH), 1000) is None
    problem = explicit_walk(deep(structure.MAX_SEQUENCE_DEPTH + 1), 1000)
    assert problem is not None and problem.depth
    assert problem.comment == f"Sequences are nested deeper than {structure.MAX_SEQUENCE_DEPTH} levels"


def test_elements_after_pixel_data_are_bounded() -> None:
    pixels = explicit(0x7FE00010, b"OW", b"\0" * 4)
    trailing = explicit(0xFFFCFFFC, b"OB", b"") * 11
    assert explicit_walk(pixels + trailing[:120], 100, max_trailing=10) is None
    problem = explicit_walk(pixels + trailing, 100, max_trailing=10)
    assert problem is not None and problem.limit


def test_deflated_stream_cut_short_or_bombing() -> None:
    data = bundled("image_dfl.dcm").read_bytes()
    assert walk(data) is None
    problem = walk(data[:-20])
    assert problem is not None and problem.comment == "Truncated: the deflated data set ends early"
    start = walker_for(data).seen
    bomb = data[:start] + zlib.compress(b"\0" * (1 << 22))[2:-4]
    w = structure.Inflating(start, limit=1 << 20)
    w.feed(bomb[start:])
    problem = w.finish()
    assert problem is not None and problem.limit
    garbage = data + b"x" * 9
    problem = walk(garbage)
    assert problem is not None and problem.comment == "Bytes follow the end of the deflated data set"


def test_depth_counts_sequences_sent_as_un() -> None:
    """A known sequence sent with VR UN and a defined length is read as a sequence (implicit VR
    inside, PS3.5 §6.2.2) by pydicom, so its depth counts too."""
    value = struct.pack("<HHI", 0x0008, 0x0100, 2) + b"X "
    for _ in range(structure.MAX_SEQUENCE_DEPTH + 1):
        inner = item(value)
        value = struct.pack("<HHI", 0x0040, 0xA730, len(inner)) + inner
    as_un = explicit(0x0040A730, b"UN", value[8:])
    problem = explicit_walk(as_un, 1000)
    assert problem is not None and problem.depth
    assert explicit_walk(explicit(0x0040A730, b"UN", item(b"")), 7) is None


FUZZ_FILES = {
    n: bundled(n).read_bytes() for n in ("JPEG-lossy.dcm", "CT_small.dcm", "test-SR.dcm", "UN_sequence.dcm")
}


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(FUZZ_FILES)),
    cut=st.integers(0, 1 << 16),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    size=st.integers(1, 300),
)
def test_any_damage_gives_the_same_verdict_in_any_chunking(
    name: str, cut: int, flips: list[tuple[int, int]], size: int
) -> None:
    """Never an exception, and the verdict does not depend on how the bytes arrive."""
    data = bytearray(FUZZ_FILES[name])
    start = walker_for(bytes(data)).seen
    for at, byte in flips:
        data[start + at % (len(data) - start)] = byte
    data = data[: max(start, len(data) - cut % (len(data) - start + 1))]
    whole, chunked = walk(bytes(data)), walk(bytes(data), size)
    assert (whole is None) == (chunked is None)
    assert whole is None or (whole.comment == chunked.comment and len(whole.comment) <= 64)  # type: ignore[union-attr]
