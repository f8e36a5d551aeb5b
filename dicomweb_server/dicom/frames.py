"""Where each frame of an instance lies in its object: computed once, at ingest; pure.

Native (uncompressed) Pixel Data is one value: frame *i* is ``frame_length``
bytes at ``pixel_offset + i * frame_length``.  Encapsulated Pixel Data
(PS3.5 §A.4) is a sequence of items: a Basic Offset Table, then fragments.
``FragmentScanner`` walks the item headers as the part streams through STOW,
so a frame request later reads exactly its fragments with ranged reads and
never decodes or even reads the rest of the instance.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dicomweb_server.errors import BadRequest

ITEM = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
MAX_OFFSET_TABLE = 1024 * 1024  # a Basic Offset Table larger than this is not kept (4 bytes per frame)

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class PixelIndex:
    """Where Pixel Data lies in an object: ``length`` is None when encapsulated."""

    offset: int  # first byte of the value, after the element header
    length: int | None


@dataclass(frozen=True)
class FrameIndex:
    """What the index keeps per instance to serve frames with ranged reads."""

    pixel_offset: int | None = None
    pixel_length: int | None = None
    fragments: list[int] | None = None  # encapsulated: offset, length of each fragment's value (flat)
    frame_fragments: list[int] | None = None  # encapsulated: index of the first fragment of each frame


class FragmentScanner:
    """Walk the items of encapsulated Pixel Data as the object's bytes stream past.

    Fed every chunk of the object in order with its absolute offset; costs one
    ``struct.unpack`` per item, whatever the fragment sizes.  Anything that is
    not a well-formed item sequence stops the scan and leaves no frame index:
    frames are then served by parsing the stored object instead.
    """

    def __init__(self, value_offset: int):
        self.pos = value_offset  # absolute offset of the next unread byte of an item header
        self._head = bytearray()
        self.items: list[int] = []  # offset, length of each item's value, the offset table first
        self.offset_table = bytearray()
        self._table: tuple[int, int] | None = None
        self.complete = False
        self.broken = False

    def feed(self, chunk: bytes | bytearray | memoryview, offset: int) -> None:
        end = offset + len(chunk)
        if self._table is not None:
            self._capture(chunk, offset)
        while not (self.complete or self.broken) and offset <= self.pos < end:
            i = self.pos - offset
            take = chunk[i : i + 8 - len(self._head)]
            self._head += take
            self.pos += len(take)
            if len(self._head) < 8:
                return  # the header goes on in the next chunk
            group, element, length = struct.unpack("<HHI", self._head)
            self._head.clear()
            if (group, element) == SEQUENCE_DELIMITER:
                self.complete = True
            elif (group, element) != ITEM or length == UNDEFINED:
                self.broken = True
            else:
                self.items += (self.pos, length)
                if len(self.items) == 2 and 0 < length <= MAX_OFFSET_TABLE:
                    self._table = (self.pos, self.pos + length)
                    self._capture(chunk, offset)
                self.pos += length

    def _capture(self, chunk: bytes | bytearray | memoryview, offset: int) -> None:
        assert self._table is not None
        start, stop = self._table
        lo, hi = max(start, offset), min(stop, offset + len(chunk))
        if lo < hi:
            self.offset_table += chunk[lo - offset : hi - offset]
        if stop <= offset + len(chunk):
            self._table = None

    def index(self, number_of_frames: int) -> FrameIndex | None:
        """The frame index once the whole object went past, or None if it cannot be known."""
        if not self.complete or self.broken or len(self.items) < 2:
            return None
        fragments = self.items[2:]
        first = frame_fragments(fragments, bytes(self.offset_table), number_of_frames)
        if first is None:
            return None
        return FrameIndex(fragments=fragments, frame_fragments=first)


def frame_fragments(fragments: Sequence[int], offset_table: bytes, number_of_frames: int) -> list[int] | None:
    """The index of each frame's first fragment (PS3.5 §A.4), or None when only the data could tell.

    One frame takes every fragment; one fragment per frame maps one to one; otherwise
    the Basic Offset Table says where each frame starts.  Without a table, frames
    spanning several fragments can only be found by looking inside the fragments
    (JPEG markers), which ingest does not do.
    """
    count = len(fragments) // 2
    if count == 0 or number_of_frames < 1:
        return None
    if number_of_frames == 1:
        return [0]
    if count == number_of_frames:
        return list(range(count))
    if len(offset_table) != 4 * number_of_frames:
        return None
    # Offsets in the table count from the first byte of the first fragment's item header.
    base = fragments[0] - 8
    by_offset = {fragments[2 * k] - 8 - base: k for k in range(count)}
    starts = [by_offset.get(o, -1) for o in struct.unpack(f"<{number_of_frames}I", offset_table)]
    if starts[0] != 0 or any(a >= b for a, b in itertools.pairwise(starts)):
        return None  # an offset that is not a fragment boundary, or out of order
    return starts


def frame_ranges(index: FrameIndex, frame: int, frame_length: int) -> list[tuple[int, int]] | None:
    """The byte ranges ``(start, stop)`` in the object that hold frame ``frame`` (1-based).

    None when the frame index cannot answer (the caller falls back to the object).
    Raises IndexError for a frame the instance does not have.
    """
    if frame < 1:
        raise IndexError(frame)
    if index.frame_fragments is not None and index.fragments is not None:
        firsts = index.frame_fragments
        if frame > len(firsts):
            raise IndexError(frame)
        stop = firsts[frame] if frame < len(firsts) else len(index.fragments) // 2
        return [
            (index.fragments[2 * k], index.fragments[2 * k] + index.fragments[2 * k + 1])
            for k in range(firsts[frame - 1], stop)
        ]
    if index.pixel_offset is None or index.pixel_length is None or frame_length <= 0:
        return None
    start = index.pixel_offset + (frame - 1) * frame_length
    if start + frame_length > index.pixel_offset + index.pixel_length:
        raise IndexError(frame)
    return [(start, start + frame_length)]


MAX_FRAMES_PER_REQUEST = 1000  # frame numbers in one request's list
MAX_FRAME_NUMBER = 2**31 - 1  # Number of Frames is an IS (PS3.5 §6.2): at most 2^31 - 1
_FRAME_NUMBER = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() accepts any script's


def parse_frame_list(text: str) -> list[int]:
    """PS3.18 §10.4.1.1.4: a comma-separated list of 1-based frame numbers.

    At most MAX_FRAMES_PER_REQUEST numbers, each from 1 to MAX_FRAME_NUMBER in ASCII digits;
    anything else is a 400 that says which rule was broken.
    """
    items = text.split(",", MAX_FRAMES_PER_REQUEST)
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"A frame list holds at most {MAX_FRAMES_PER_REQUEST} frame numbers")
    numbers = []
    for item in items:  # no spaces: str.strip() would also take Unicode ones (U+2009)
        if not _FRAME_NUMBER.fullmatch(item) or not 1 <= int(item) <= MAX_FRAME_NUMBER:
            shown = item if len(item) <= 20 else item[:20] + "..."
            raise BadRequest(
                f"Frame list must be frame numbers from 1 to {MAX_FRAME_NUMBER} (ASCII digits) "
                f"separated by commas, got {shown!r}"
            )
        numbers.append(int(item))
    return numbers
