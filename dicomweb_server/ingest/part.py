"""One instance in flight through an ingest session, and the index record it becomes.

A part keeps a bounded prefix in memory until its DICOM header parses (``part10.describe``), then
streams to its object while the frame scanner (encapsulated Pixel Data, PS3.5 §A.4) and the
structure walker (is the data set complete?) look at each chunk as it passes.  Once its object is
being made durable only the compact index record is kept, so memory stays flat however many
instances a session has.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from dicomweb_server.db.store import Record
from dicomweb_server.dicom import part10, structure
from dicomweb_server.dicom.frames import FragmentScanner, FrameIndex
from dicomweb_server.storage.base import ObjectWriter

HEADER_PROBE = 16 * 1024  # first try at the header; each retry waits for 16x more, up to the budget


@dataclass
class Part:
    """The state of the part being received: its prefix until described, then its writer."""

    prefix: bytearray | None = field(default_factory=bytearray)
    size: int = 0
    parse_at: int = HEADER_PROBE
    skip: bool = False  # failed (and reported): the rest of its bytes are counted, not kept
    desc: part10.Description | None = None
    key: str | None = None
    writer: ObjectWriter | None = None
    scanner: FragmentScanner | None = None  # encapsulated Pixel Data: finds the frames as they pass
    checker: structure.Checker | None = None  # walks every element: is the data set complete?


@dataclass
class Durable:
    """A part whose object is being made durable: its index record and the commit under way
    (which returns the object's SHA-256)."""

    record: Record
    commit: asyncio.Future[bytes]


def frame_index(part: Part) -> FrameIndex | None:
    """Where the part's frames lie in its object, when that is known (see frames.py)."""
    assert part.desc is not None
    pixel = part.desc.pixel
    if part.scanner is not None:
        return part.scanner.index(part.desc.instance.get("number_of_frames") or 1)
    if pixel is None or pixel.length is None or pixel.offset + pixel.length > part.size:
        return None
    return FrameIndex(pixel_offset=pixel.offset, pixel_length=pixel.length)


def index_record(
    desc: part10.Description, key: str, size: int, frames: FrameIndex | None, shared: dict[str, Any]
) -> Record:
    """The index record; its SHA-256 is filled in when the object's commit returns it.

    Records wait for the session's one transaction, so a long body keeps thousands: the study and
    series attributes, the same for every instance of a series, are kept once (``shared``, keyed
    by their JSON text), which takes about 40% off each record."""
    fields = vars(desc) | {"object_key": key, "size": size, "frames": frames, "checker": None}
    for text, values in (("study_attrs", "study"), ("series_attrs", "series")):
        fields[text], fields[values] = shared.setdefault(fields[text], (fields[text], fields[values]))
    return Record(**fields)
