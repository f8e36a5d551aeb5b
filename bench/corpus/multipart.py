"""multipart/related request bodies for STOW-RS: prebuilt in memory, or streamed for huge bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from bench.corpus.ct import UID_PREFIX, uid

BOUNDARY = "dicomweb-bench-7f3a9c2e51d04b86"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
_PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
_CLOSE = f"--{BOUNDARY}--\r\n".encode()


def build_body(instances: Sequence[bytes]) -> bytes:
    """One multipart/related body holding every instance as an application/dicom part."""
    pieces: list[bytes] = []
    for data in instances:
        if BOUNDARY.encode() in data:
            raise ValueError("boundary occurs inside an instance")
        pieces += (_PART_HEAD, data, b"\r\n")
    pieces.append(_CLOSE)
    return b"".join(pieces)


def _uid_of_length(length: int, *parts: object) -> str:
    value = uid(0, "big-body", *parts)
    return value[:length] if len(value) >= length else value + "1" * (length - len(value))


@dataclass
class BigBodyPlan:
    """Streams ``parts`` copies of ``template`` with unique SOP Instance UIDs, in one new study/series.

    The template's UIDs are overwritten in place with UIDs of the same length, so the patched
    datasets stay valid Part-10 files without re-encoding; nothing but one part is held in memory.
    """

    template: bytes
    sop_uid: str
    study_uid: str
    series_uid: str
    parts: int

    def __post_init__(self) -> None:
        self._buf = bytearray(self.template)
        sop_len = len(self.sop_uid)
        self._sop_offsets = _offsets(self.template, self.sop_uid)
        digits = sop_len - len(UID_PREFIX) - len("99.") - 1
        if digits < len(str(self.parts)):
            raise ValueError("template SOP Instance UID too short to number the parts")
        self._sop_stem, self._digits = f"{UID_PREFIX}99.1", digits
        for old, label in ((self.study_uid, "study"), (self.series_uid, "series")):
            new = _uid_of_length(len(old), label).encode()
            for off in _offsets(self.template, old):
                self._buf[off : off + len(new)] = new
        self.new_study_uid = _uid_of_length(len(self.study_uid), "study")

    @property
    def nbytes(self) -> int:
        return self.parts * (len(_PART_HEAD) + len(self.template) + 2) + len(_CLOSE)

    async def stream(self) -> AsyncIterator[bytes]:
        for i in range(self.parts):
            sop = f"{self._sop_stem}{i:0{self._digits}d}".encode()
            for off in self._sop_offsets:
                self._buf[off : off + len(sop)] = sop
            yield _PART_HEAD + bytes(self._buf) + b"\r\n"
        yield _CLOSE


def _offsets(data: bytes, value: str) -> list[int]:
    needle, found, start = value.encode(), [], 0
    while (pos := data.find(needle, start)) >= 0:
        found.append(pos)
        start = pos + len(needle)
    if not found:
        raise ValueError(f"UID {value} not found in template")
    return found
