"""Is a Part 10 data set structurally complete?  Checked as its bytes stream past; pure.

STOW must never acknowledge an instance whose bytes stop short of what its
elements declare.  ``Walker`` follows the element headers of the data set
(PS3.5 §7), fed the part's bytes in order, chunk by chunk: it skips each
value by its declared length (it never reads or allocates it), descends into
sequences and items of defined or undefined length, and walks encapsulated
values (PS3.5 §A.4) item by item up to their sequence delimiter.  At the end
of the part, ``finish`` says what is missing, if anything: a value cut short,
an element header cut short, an item or sequence without its delimiter.

Costs one ``struct.unpack`` per element header; a chunk inside a long value
costs a comparison.  Elements after the top-level Pixel Data (trailing
padding, a signature sequence) are walked the same way, within
``MAX_TRAILING_ELEMENTS``.  Sequences nested deeper than ``MAX_SEQUENCE_DEPTH``
are refused before any recursive parser sees them.
"""

from __future__ import annotations

import struct
import time
import zlib

from pydicom._dicom_dict import DicomDictionary

# Sequence nesting beyond any real IOD (SR content trees are rarely ten deep); the DICOM JSON of
# a deeper data set would also pass orjson's nesting limit (three JSON levels per sequence level).
MAX_SEQUENCE_DEPTH = 64
MAX_TRAILING_ELEMENTS = 10_000  # elements after the top-level Pixel Data
MAX_AFTER_DEFLATE = 8  # bytes after the end of a deflated data set's stream
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Implicit VR: a defined-length value of these tags is a sequence (PS3.6).
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

# Top-level elements whose place the walker notes: a failure can name its instance without pydicom.
NAMING_TAGS = frozenset({0x00080016, 0x00080018})

# Container kinds on the walker's stack.
_DATASET, _SEQUENCE, _FRAGMENTS = 0, 1, 2

# Error Comments (LO, 64 characters; tests/unit/test_structure.py checks the worst cases).
TRUNCATED_VALUE_COMMENT = "Truncated: {tag} value lacks {missing} bytes"
TRUNCATED_HEADER_COMMENT = "Truncated inside an element header after {tag}"
TRUNCATED_ITEM_COMMENT = "Truncated: item in {tag} lacks {missing} bytes"
NO_SEQUENCE_DELIMITER_COMMENT = "Truncated: {tag} ends without its sequence delimiter"
NO_ITEM_DELIMITER_COMMENT = "Truncated: item in {tag} ends without its item delimiter"
OVERRUN_COMMENT = "Malformed: {tag} is longer than its item or sequence"
NOT_AN_ITEM_COMMENT = "Malformed: {tag} holds an element where an item must be"
UNDEFINED_ITEM_COMMENT = "Malformed: a fragment of {tag} has an undefined length"
STRAY_DELIMITER_COMMENT = "Malformed: a sequence delimiter inside an item of {tag}"
TOO_DEEP_COMMENT = "Sequences are nested deeper than {limit} levels"
TRAILING_COMMENT = "More than {limit} elements after Pixel Data"
INFLATE_LIMIT_COMMENT = "Deflated data set inflates past the part size limit"
INFLATE_ERROR_COMMENT = "Deflated data set is not a valid deflate stream"
INFLATE_TRUNCATED_COMMENT = "Truncated: the deflated data set ends early"
INFLATE_TRAILING_COMMENT = "Bytes follow the end of the deflated data set"
TOO_SLOW_COMMENT = "DICOM header exceeds the parse time budget"


class Problem:
    """What is wrong with a data set: the Error Comment, and whether it is a resource limit
    (0xA700) rather than a data set that cannot be understood (0xC000)."""

    __slots__ = ("comment", "depth", "limit")

    def __init__(self, comment: str, *, limit: bool = False, depth: bool = False):
        self.comment = comment
        self.limit = limit
        self.depth = depth

    def __repr__(self) -> str:
        return f"Problem({self.comment!r})"


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Frame:
    """A data set, item, sequence or encapsulated value being walked."""

    __slots__ = ("end", "fresh", "implicit", "kind", "tag")

    def __init__(self, kind: int, end: int | None, implicit: bool, tag: int):
        self.kind = kind
        self.end = end  # absolute offset of its end, None for an undefined length
        self.implicit = implicit
        self.tag = tag  # the element that opened it
        self.fresh = True  # its first element is still to come


class Walker:
    """Feed the data set's bytes in order (``feed``); ``finish`` at the end of the part.

    ``seen`` is the absolute offset just past the last byte fed; the walker starts at
    ``start`` (the first byte of the data set, after the File Meta Information).
    """

    def __init__(
        self,
        start: int,
        *,
        implicit: bool,
        little: bool,
        max_depth: int = MAX_SEQUENCE_DEPTH,
        max_trailing: int = MAX_TRAILING_ELEMENTS,
    ):
        self.seen = start
        self.pos = start  # absolute offset of the next element header
        self.problem: Problem | None = None
        self.deadline: float | None = None
        self._fmt = "<" if little else ">"
        self._head = bytearray()
        self._need = 8
        self._stack = [_Frame(_DATASET, None, implicit, 0)]
        self._depth = 0
        self._max_depth = max_depth
        self._max_trailing = max_trailing
        self._after_pixels: int | None = None  # elements counted after the top-level Pixel Data
        self._last = 0  # tag of the last element header read
        self._count = 0
        self.naming: dict[int, tuple[int, int]] = {}  # where the top-level UIDs are: (offset, length)
        self._tag = 0  # the header just read
        self._vr = b""
        self._length = 0

    # -- feeding --------------------------------------------------------------------------
    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        offset = self.seen
        end = offset + len(chunk)
        self.seen = end
        while self.problem is None and offset <= self.pos < end:
            i = self.pos - offset
            if not self._head and i + 12 <= len(chunk):  # the whole header is here: read it in place
                size = self._header(chunk, i)
                assert size is not None
                self.pos += size
                self._after_header()
                continue
            take = chunk[i : i + self._need - len(self._head)]
            self._head += take
            self.pos += len(take)
            if len(self._head) < self._need:
                return  # the header goes on in the next chunk
            if self._header(self._head, 0) is None:
                self._need = 12  # an explicit VR with a 4-byte length: 4 more bytes
                continue
            self._need = 8
            self._head.clear()
            self._after_header()

    def _header(self, buf: bytes | bytearray | memoryview, at: int) -> int | None:
        """Read the element or item header at ``buf[at:]``; its size, or None if ``buf`` holds too
        little of it.  Sets ``self._tag``, ``self._vr``, ``self._length``."""
        top = self._stack[-1]
        group, element = struct.unpack_from(self._fmt + "HH", buf, at)
        self._tag = group << 16 | element
        self._vr = b""
        if top.kind != _DATASET or group == 0xFFFE or top.implicit:
            if top.kind == _DATASET and group != 0xFFFE and top.fresh and self._turns_explicit(buf, at, top):
                return self._header(buf, at)  # pydicom reads a top-level data set whose first element
            (self._length,) = struct.unpack_from(self._fmt + "I", buf, at + 4)  # has a VR as explicit
            return 8
        vr = bytes(buf[at + 4 : at + 6])
        if top.fresh and not _is_vr(vr):
            top.implicit = True  # pydicom reads such a data set (or item) as implicit VR: so do we
            top.fresh = False
            return self._header(buf, at)
        self._vr = vr
        if vr in _LONG_VRS:
            if len(buf) < at + 12:
                return None
            (self._length,) = struct.unpack_from(self._fmt + "I", buf, at + 8)
            return 12
        (self._length,) = struct.unpack_from(self._fmt + "H", buf, at + 6)
        return 8

    def _after_header(self) -> None:
        top = self._stack[-1]
        top.fresh = False
        tag = self._last = self._tag
        self._tick()
        if top.kind == _DATASET:
            self._element(top, tag, self._vr, self._length)
        else:
            self._item(top, tag, self._length)
        self._close_ended()

    def _turns_explicit(self, buf: bytes | bytearray | memoryview, at: int, top: _Frame) -> bool:
        top.fresh = False
        if len(self._stack) > 1 or not _is_vr(buf[at + 4 : at + 6]):
            return False
        top.implicit = False
        return True

    def _tick(self) -> None:
        self._count += 1
        if self.deadline is not None and self._count % 1024 == 0 and time.monotonic() > self.deadline:
            self.problem = Problem(TOO_SLOW_COMMENT, limit=True)
        if self._after_pixels is not None:
            self._after_pixels += 1
            if self._after_pixels > self._max_trailing:
                self.problem = Problem(TRAILING_COMMENT.format(limit=self._max_trailing), limit=True)

    def _element(self, top: _Frame, tag: int, vr: bytes, length: int) -> None:
        """An element header in a data set or item has been read; ``self.pos`` is its value."""
        if tag == _ITEM_END and len(self._stack) > 1 and top.end is None:
            self._stack.pop()  # the end of an undefined-length item
            return
        if tag == _SEQ_END and len(self._stack) > 1:
            self.problem = Problem(STRAY_DELIMITER_COMMENT.format(tag=_tag(top.tag)))
            return
        if tag in (_ITEM_END, _SEQ_END):  # where it means nothing (top level, defined-length item)
            self.pos += 0 if length == UNDEFINED else length
            return
        if tag >> 16 == 0xFFFE:
            self.problem = Problem(NOT_AN_ITEM_COMMENT.format(tag=_tag(top.tag)))
            return
        implicit = top.implicit
        is_sq = vr == b"SQ" or (implicit and tag in _SQ_TAGS) or (vr == b"UN" and length == UNDEFINED)
        if length == UNDEFINED:
            if is_sq or (implicit and tag not in _PIXEL_TAGS):
                self._push(_SEQUENCE, None, implicit or vr == b"UN", tag)  # PS3.5 §6.2.2: UN is
            else:  # implicit VR little endian inside
                self._push(_FRAGMENTS, None, implicit, tag)
            return
        self._check_fits(tag, length)
        if self.problem is not None:
            return
        if vr == b"UN" and tag in _SQ_TAGS and length > 0:  # pydicom reads it as the sequence it is
            self._push(_SEQUENCE, self.pos + length, True, tag)  # (implicit VR inside, PS3.5 §6.2.2)
            return
        if is_sq and length > 0:
            self._push(_SEQUENCE, self.pos + length, implicit, tag)
            return
        if len(self._stack) == 1:
            if tag in _PIXEL_TAGS and self._after_pixels is None:
                self._after_pixels = 0
            elif tag in NAMING_TAGS:
                self.naming[tag] = (self.pos, length)
        self.pos += length

    def _item(self, top: _Frame, tag: int, length: int) -> None:
        """An item header in a sequence or an encapsulated value."""
        if tag == _SEQ_END:
            if top.end is None:
                self._pop()
            else:
                self.pos = max(self.pos, top.end)  # pydicom stops reading the sequence there too
            return
        if tag != _ITEM:
            self.problem = Problem(NOT_AN_ITEM_COMMENT.format(tag=_tag(top.tag)))
            return
        if length == UNDEFINED:
            if top.kind == _FRAGMENTS:
                self.problem = Problem(UNDEFINED_ITEM_COMMENT.format(tag=_tag(top.tag)))
            else:
                self._stack.append(_Frame(_DATASET, None, top.implicit, top.tag))
            return
        self._check_fits(top.tag, length)
        if self.problem is not None:
            return
        if top.kind == _FRAGMENTS:
            self.pos += length
        else:
            self._stack.append(_Frame(_DATASET, self.pos + length, top.implicit, top.tag))

    def _push(self, kind: int, end: int | None, implicit: bool, tag: int) -> None:
        if kind == _SEQUENCE:
            self._depth += 1
            if self._depth > self._max_depth:
                self.problem = Problem(TOO_DEEP_COMMENT.format(limit=self._max_depth), depth=True)
                return
        self._stack.append(_Frame(kind, end, implicit, tag))

    def _pop(self) -> None:
        frame = self._stack.pop()
        if frame.kind == _SEQUENCE:
            self._depth -= 1
        elif len(self._stack) == 1 and frame.tag in _PIXEL_TAGS and self._after_pixels is None:
            self._after_pixels = 0  # the end of encapsulated Pixel Data

    def _check_fits(self, tag: int, length: int) -> None:
        """A value inside a defined-length container must end within it."""
        for frame in reversed(self._stack):
            if frame.end is not None:
                if self.pos + length > frame.end:
                    self.problem = Problem(OVERRUN_COMMENT.format(tag=_tag(tag)))
                return

    def _close_ended(self) -> None:
        """Leave every defined-length item and sequence whose end has been reached."""
        while self.problem is None and len(self._stack) > 1:
            end = self._stack[-1].end
            if end is None or self.pos < end:
                return
            self._pop()

    # -- the end of the part --------------------------------------------------------------
    def finish(self) -> Problem | None:
        """The part is over: what is missing, or None when the data set is complete."""
        if self.problem is not None:
            return self.problem
        if self._head:
            return Problem(TRUNCATED_HEADER_COMMENT.format(tag=_tag(self._last)))
        top = self._stack[-1]
        if self.pos > self.seen:
            missing = self.pos - self.seen
            if top.kind == _FRAGMENTS:
                return Problem(TRUNCATED_ITEM_COMMENT.format(tag=_tag(top.tag), missing=missing))
            return Problem(TRUNCATED_VALUE_COMMENT.format(tag=_tag(self._last), missing=missing))
        if len(self._stack) > 1:
            if top.end is not None:
                missing = top.end - self.seen
                return Problem(TRUNCATED_ITEM_COMMENT.format(tag=_tag(top.tag), missing=missing))
            if top.kind == _DATASET:
                return Problem(NO_ITEM_DELIMITER_COMMENT.format(tag=_tag(top.tag)))
            return Problem(NO_SEQUENCE_DELIMITER_COMMENT.format(tag=_tag(top.tag)))
        return None


def _is_vr(vr: bytes | bytearray | memoryview) -> bool:
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


class Inflating:
    """A ``Walker`` over a deflated data set (PS3.5 §A.5): fed the compressed bytes, it walks
    the inflated ones, never holding more than ``piece`` of them, and at most ``limit`` in all."""

    def __init__(self, start: int, *, limit: int, piece: int = 1 << 20, **walker: int):
        self.seen = start
        self.walker = Walker(0, implicit=False, little=True, **walker)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._limit = limit
        self._piece = piece
        self._problem: Problem | None = None
        self._trailing = 0

    @property
    def problem(self) -> Problem | None:
        return self._problem or self.walker.problem

    @property
    def deadline(self) -> float | None:
        return self.walker.deadline

    @deadline.setter
    def deadline(self, value: float | None) -> None:
        self.walker.deadline = value

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self.seen += len(chunk)
        if self.problem is not None:
            return
        inflater = self._inflater
        if inflater.eof:
            self._after_end(bytes(chunk))
            return
        data = bytes(chunk)
        try:
            while data and self.problem is None:
                out = inflater.decompress(data, self._piece)
                if self.walker.seen + len(out) > self._limit:
                    self._problem = Problem(INFLATE_LIMIT_COMMENT, limit=True)
                    return
                self.walker.feed(out)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    self._after_end(inflater.unused_data)
                    return
        except zlib.error:
            self._problem = Problem(INFLATE_ERROR_COMMENT)

    def _after_end(self, data: bytes) -> None:
        """The data set is whole once the deflate stream ends.  A few bytes may follow it: a NUL
        that pads it to an even length (PS3.5 §A.5), or a gzip-style CRC and size (pydicom's
        image_dfl.dcm); more than ``MAX_AFTER_DEFLATE`` is something else, and refused."""
        self._trailing += len(data)
        if self._trailing > MAX_AFTER_DEFLATE:
            self._problem = Problem(INFLATE_TRAILING_COMMENT)

    def finish(self) -> Problem | None:
        if self.problem is not None:
            return self.problem
        if not self._inflater.eof:
            return Problem(INFLATE_TRUNCATED_COMMENT)
        return self.walker.finish()


Checker = Walker | Inflating


def checker(start: int, *, implicit: bool, little: bool, deflated: bool, inflate_limit: int) -> Checker:
    """The walker for a data set that starts at ``start`` in its part."""
    if deflated:
        return Inflating(start, limit=inflate_limit)
    return Walker(start, implicit=implicit, little=little)
