"""Frame index (frames.py): fragment scanning at any chunking, offset tables, byte ranges."""

from __future__ import annotations

import struct

import pytest

from dicomweb_server.dicom.frames import FragmentScanner, FrameIndex, frame_fragments, frame_ranges


def item(value: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value


def encapsulated(fragments: list[bytes], table: list[int] | None = None) -> bytes:
    bot = b"".join(struct.pack("<I", o) for o in table) if table else b""
    return item(bot) + b"".join(item(f) for f in fragments) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def scan(data: bytes, start: int, chunk: int) -> FragmentScanner:
    scanner = FragmentScanner(start)
    for i in range(0, len(data), chunk):
        scanner.feed(data[i : i + chunk], i)
    return scanner


def frames_of(data: bytes, index: FrameIndex, count: int) -> list[bytes]:
    out = []
    for n in range(1, count + 1):
        ranges = frame_ranges(index, n, 0)
        assert ranges is not None
        out.append(b"".join(data[a:b] for a, b in ranges))
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 9, 64, 65536])
def test_one_fragment_per_frame_at_any_chunking(chunk: int) -> None:
    header = b"H" * 37  # bytes before the Pixel Data value
    fragments = [bytes([k]) * (10 + k) for k in range(5)]
    data = header + encapsulated(fragments) + b"trailing elements"
    index = scan(data, len(header), chunk).index(5)
    assert index is not None
    assert frames_of(data, index, 5) == fragments


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_offset_table_groups_fragments_into_frames(chunk: int) -> None:
    parts = [b"a" * 4, b"b" * 6, b"c" * 2, b"d" * 8, b"e" * 4]
    # Frame 1 = fragments 0-1, frame 2 = fragments 2-4; offsets from the first fragment's item.
    table = [0, (8 + 4) + (8 + 6)]
    data = b"P" * 11 + encapsulated(parts, table)
    index = scan(data, 11, chunk).index(2)
    assert index is not None and index.frame_fragments == [0, 2]
    assert frames_of(data, index, 2) == [b"aaaabbbbbb", b"ccddddddddeeee"]


def test_single_frame_takes_every_fragment() -> None:
    data = encapsulated([b"x" * 3, b"y" * 5])
    index = scan(data, 0, 4).index(1)
    assert index is not None
    assert frames_of(data, index, 1) == [b"xxxyyyyy"]


def test_unknowable_layouts_leave_no_index() -> None:
    three = encapsulated([b"1", b"2", b"3"])
    assert scan(three, 0, 2).index(2) is None  # 3 fragments, 2 frames, no table
    assert scan(three[:-8], 0, 2).index(3) is None  # no sequence delimiter: truncated
    garbage = b"\x00" * 16
    scanner = scan(garbage, 0, 4)
    assert scanner.broken and scanner.index(1) is None
    bad_table = encapsulated([b"1", b"2", b"3"], [0, 5])  # 5 is not a fragment boundary
    assert scan(bad_table, 0, 3).index(2) is None


def test_offset_table_rules() -> None:
    fragments = [100, 4, 112, 4, 124, 4]  # value offsets and lengths
    assert frame_fragments(fragments, b"", 3) == [0, 1, 2]
    assert frame_fragments(fragments, struct.pack("<2I", 0, 12), 2) == [0, 1]
    assert frame_fragments(fragments, struct.pack("<2I", 12, 0), 2) is None  # out of order
    assert frame_fragments([], b"", 1) is None


def test_native_frame_ranges() -> None:
    index = FrameIndex(pixel_offset=1000, pixel_length=300)
    assert frame_ranges(index, 1, 100) == [(1000, 1100)]
    assert frame_ranges(index, 3, 100) == [(1200, 1300)]
    with pytest.raises(IndexError):
        frame_ranges(index, 4, 100)
    with pytest.raises(IndexError):
        frame_ranges(index, 0, 100)
    assert frame_ranges(FrameIndex(), 1, 100) is None  # nothing known: the caller parses the object
