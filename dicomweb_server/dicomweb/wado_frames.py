"""WADO-RS frames and bulk data (PS3.18 §10.4.1.1.4, §10.4.1.1.5).

Only the requested frames' bytes are read: the frame index computed at ingest says where
each lies.  Each frame is read, and decoded when it must be, before its part starts; the
first one before the status line, so that a frame that cannot be produced is a clean
status, never a 200 cut short.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.db.pool import connection
from dicomweb_server.db.retrieve import StoredInstance, find_instance
from dicomweb_server.dicom import frames, transcode
from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.dicom.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    FRAME_MEDIA_TYPES,
    PLAIN_LITTLE_ENDIAN,
)
from dicomweb_server.dicomweb.wado_stream import (
    aclose,
    guarded,
    primed,
    read_checked,
    scope_of,
    stream_checked,
)
from dicomweb_server.errors import BadRequest, NotAcceptable, NotFound
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.web.media import MULTIPART, Offer, negotiate_request
from dicomweb_server.web.multipart import PART_END, MultipartWriter

log = logging.getLogger("dicomweb_server.dicomweb.wado")

OCTET = frames.OCTET_STREAM
EVRLE = EXPLICIT_VR_LITTLE_ENDIAN
PIXEL_DATA = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float and Double Float Pixel Data


@dataclass(frozen=True)
class FrameSource:
    """One instance's frames: where they lie, and what they are."""

    inst: StoredInstance
    info: transcode.PixelInfo

    @property
    def encapsulated(self) -> bool:
        return self.inst.transfer_syntax_uid in FRAME_MEDIA_TYPES

    @property
    def count(self) -> int:
        return self.info.number_of_frames or 1

    def ranges(self, frame: int) -> list[tuple[int, int]] | None:
        """Byte ranges of a frame in the object, or None when the object must be parsed instead.

        The index and the attributes may disagree (Number of Frames larger than the frames the
        pixel data holds): a frame the pixel data does not hold is a 404, never an IndexError.
        """
        syntax = self.inst.transfer_syntax_uid
        if not self.encapsulated and syntax not in PLAIN_LITTLE_ENDIAN:
            return None  # big endian or deflated: the stored bytes are not the frame's bytes
        length = 0 if self.encapsulated else transcode.native_frame_length(self.info)
        if not self.encapsulated and (self.info.bits_allocated == 1 and length * 8 != self._bits()):
            return None  # single-bit frames that do not end on a byte boundary
        try:
            return frames.frame_ranges(self.inst.frames, frame, length)
        except IndexError:
            raise NotFound(f"Frame {frame} is not in the stored pixel data") from None

    def _bits(self) -> int:
        i = self.info
        return i.rows * i.columns * i.samples_per_pixel


async def _find(request: Request, *, metadata: bool = False) -> StoredInstance:
    state = request.app.state
    scope = scope_of(request)
    assert scope.series is not None and scope.sop is not None
    async with connection(state.pool) as conn:
        inst = await find_instance(
            conn, request.state.tenant, scope.study, scope.series, scope.sop, metadata=metadata
        )
    if inst is None:
        raise NotFound("No such instance")
    return inst


def _source_of(inst: StoredInstance) -> FrameSource:
    assert inst.metadata is not None
    meta = orjson.loads(inst.metadata)
    if not any(tag in meta for tag in PIXEL_DATA):
        raise BadRequest("The instance has no Pixel Data, so it has no frames")
    try:
        return FrameSource(inst, transcode.PixelInfo.from_json(meta))
    except transcode.TranscodeError as exc:
        raise NotAcceptable(f"Frames cannot be produced for this instance: {exc}") from None


def _frame_offers(source: FrameSource) -> list[Offer]:
    native = FRAME_MEDIA_TYPES.get(source.inst.transfer_syntax_uid)
    return [Offer(MULTIPART, OCTET)] + ([Offer(MULTIPART, native)] if native else [])


def _frame_producible(source: FrameSource) -> Callable[[Offer, str | None], bool]:
    stored = source.inst.transfer_syntax_uid

    def check(offer: Offer, syntax: str | None) -> bool:
        if syntax in (None, "*", stored):
            return True
        # Uncompressed frames carry no VR: either little-endian native syntax names them.
        return (
            offer.part_type == OCTET
            and syntax in PLAIN_LITTLE_ENDIAN
            and (not source.encapsulated or transcode.can_transcode(stored, EVRLE))
        )

    return check


async def retrieve_frames(request: Request) -> Response:
    """GET .../instances/{i}/frames/{list}: only the requested frames' bytes are read."""
    numbers = frames.parse_frame_list(request.path_params["frames"])
    return await _frames_response(request, _source_of(await _find(request, metadata=True)), numbers)


_Cache = list[tuple[str, list[bytes]]]  # the frames of a parsed object, once per request


@dataclass(frozen=True)
class _Plan:
    """How a request's frames go out: as stored or decoded, and what a decoding failure does."""

    source: FrameSource
    as_stored: bool
    ctype: str  # the parts' Content-Type
    strict: bool  # an explicit uncompressed syntax was asked for: a frame that does not decode is a 406

    @property
    def stored_ctype(self) -> str:
        stored = self.source.inst.transfer_syntax_uid
        return f"{FRAME_MEDIA_TYPES[stored]}; transfer-syntax={stored}"


async def _frames_response(
    request: Request, source: FrameSource, numbers: list[int], *, as_stored: bool = False
) -> Response:
    for n in sorted(set(numbers)):
        if n > source.count:
            raise NotFound(f"Frame {n} does not exist: the instance has {source.count} frame(s)")
        source.ranges(n)  # a frame the pixel data does not hold is a 404 now, not mid-stream
    choice = negotiate_request(request, _frame_offers(source), _frame_producible(source))
    stored = source.inst.transfer_syntax_uid
    # As stored when asked (``*``, the stored syntax, the native type); otherwise uncompressed.
    as_stored = (
        as_stored
        or (not source.encapsulated)
        or choice.transfer_syntax in ("*", stored)
        or (choice.offer.part_type != OCTET)
    )
    if as_stored and source.encapsulated:
        ctype = f"{choice.offer.part_type}; transfer-syntax={stored}"
        if choice.offer.part_type == OCTET:
            ctype = f"{FRAME_MEDIA_TYPES[stored]}; transfer-syntax={stored}"
    else:
        ctype = f"{OCTET}; transfer-syntax={EVRLE}"
    plan = _Plan(source, as_stored, ctype, strict=choice.transfer_syntax is not None)
    store: ObjectStore = request.app.state.store
    cache: _Cache = []
    # The first frame is produced now, before the status line: the response's type is its type.
    first_type, first = await _frame(store, plan, numbers[0], cache)
    if cache and max(numbers) > len(cache[0][1]):
        raise NotFound(
            f"Frame {max(numbers)} does not exist: the pixel data holds {len(cache[0][1])} frame(s)"
        )
    writer = MultipartWriter(first_type.split(";")[0])  # RFC 2387: the parts' type
    rest = _frame_parts(store, plan, numbers[1:], writer, cache)
    return StreamingResponse(
        guarded(request, writer.part(first, first_type, length=True), rest), media_type=writer.media_type
    )


async def _frame_parts(
    store: ObjectStore, plan: _Plan, numbers: list[int], writer: MultipartWriter, cache: _Cache
) -> AsyncIterator[bytes]:
    for n in numbers:
        ctype, data = await _frame(store, plan, n, cache)
        yield writer.part(data, ctype, length=True)
    yield writer.end()


async def _frame(store: ObjectStore, plan: _Plan, n: int, cache: _Cache) -> tuple[str, bytes]:
    """Frame ``n`` and its Content-Type: as planned, or as stored when it does not decode and the
    request left the syntax to us (PS3.18 §8.7.3.5: the part header names what it holds)."""
    source = plan.source
    ranges = source.ranges(n)
    if ranges is None:
        return await _frame_from_object(store, plan, n, cache)
    data = b"".join([await read_checked(store, source.inst, a, b) for a, b in ranges])
    if plan.as_stored:
        return plan.ctype, data
    syntax = source.inst.transfer_syntax_uid
    try:
        return plan.ctype, await asyncio.to_thread(transcode.decode_frame, data, syntax, source.info)
    except transcode.TranscodeError as exc:
        return plan.stored_ctype, _undecodable(plan, exc, data)


def _undecodable(plan: _Plan, exc: transcode.TranscodeError, stored: bytes) -> bytes:
    if plan.strict:
        raise NotAcceptable(f"The frame cannot be decoded to uncompressed pixels: {exc}") from None
    log.warning(
        "frame sent as stored: it does not decode",
        extra={"event": "frame_not_decoded", "object_key": plan.source.inst.object_key},
    )
    return stored


async def _frame_from_object(store: ObjectStore, plan: _Plan, n: int, cache: _Cache) -> tuple[str, bytes]:
    """A frame of an instance whose frame index cannot answer (deflated, big endian, an offset
    table ingest could not resolve): the stored object is parsed, once per request."""
    if not cache:
        cache.append(await _split(plan, await read_checked(store, plan.source.inst)))
    ctype, frames_ = cache[0]
    if n > len(frames_):
        raise NotFound(f"Frame {n} does not exist: the pixel data holds {len(frames_)} frame(s)")
    return ctype, frames_[n - 1]


async def _split(plan: _Plan, data: bytes) -> tuple[str, list[bytes]]:
    try:
        return plan.ctype, await asyncio.to_thread(transcode.split_frames, data, plan.as_stored)
    except transcode.TranscodeError as exc:
        if plan.as_stored or not plan.source.encapsulated:
            raise NotAcceptable(f"Frames cannot be produced for this instance: {exc}") from None
        error = exc
    try:
        stored = await asyncio.to_thread(transcode.split_frames, data, True)
    except transcode.TranscodeError as exc:
        raise NotAcceptable(f"Frames cannot be produced for this instance: {exc}") from None
    _undecodable(plan, error, b"")
    return plan.stored_ctype, stored


# -- bulk data ----------------------------------------------------------------------

BULK_OFFERS = [Offer(MULTIPART, OCTET), Offer(OCTET)]
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX = re.compile(r"[0-9]{1,9}")
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range (RFC 9110 §14.2) as ``(start, stop)``; None to send everything.

    Several ranges, or a range we do not parse, are answered with the whole value, which the
    RFC allows.  Digits are ASCII only.
    """
    match = _RANGE.fullmatch((header or "").replace(" ", ""))
    if match is None or not (match[1] or match[2]):
        return None
    first, last = match[1], match[2]
    if not first:
        start, stop = max(size - int(last), 0), size
    else:
        start = int(first)
        stop = min(int(last) + 1, size) if last else size
    if start >= size or start >= stop:
        raise _RangeNotSatisfiable(size)
    return start, stop


class _RangeNotSatisfiable(BadRequest):
    status = 416

    def __init__(self, size: int):
        super().__init__("Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})


async def retrieve_bulkdata(request: Request) -> Response:
    """GET .../instances/{i}/bulkdata/{tag path}: a value that the metadata replaced by a BulkDataURI."""
    path = request.path_params["path"].strip("/").split("/")
    if not all((_INDEX if k % 2 else _TAG).fullmatch(step) for k, step in enumerate(path)):
        raise NotFound("No such bulk data: a path is tags (8 hex digits) and item numbers, by turns")
    choice = negotiate_request(request, BULK_OFFERS)
    store: ObjectStore = request.app.state.store
    pixels = len(path) == 1 and path[0].upper() in PIXEL_DATA
    inst = await _find(request, metadata=pixels)
    if pixels and inst.transfer_syntax_uid in FRAME_MEDIA_TYPES:
        # Compressed Pixel Data has no single value: its frames, as stored (PS3.18 §8.7.3.3.2).
        source = _source_of(inst)
        return await _frames_response(request, source, list(range(1, source.count + 1)), as_stored=True)
    index = inst.frames
    if pixels and index.pixel_offset is not None and index.pixel_length is not None:
        # Native Pixel Data is one value, at the offset ingest recorded: sent in the stored byte order.
        offset, length = index.pixel_offset, index.pixel_length
        reader: Callable[[int, int], AsyncIterator[bytes]] = lambda a, b: stream_checked(  # noqa: E731
            store, inst, offset + a, offset + b
        )
    else:
        value = await _value_from_object(store, inst, path)
        length = len(value)
        reader = lambda a, b: _once(value[a:b])  # noqa: E731
    span = parse_range(request.headers.get("range"), length)
    start, stop = span or (0, length)
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
    if choice.offer.media_type == OCTET:
        headers["Content-Length"] = str(stop - start)
        body = await primed(request, reader(start, stop))
        return StreamingResponse(body, status, headers, media_type=OCTET)
    writer = MultipartWriter(OCTET)
    body = await primed(request, _wrap(reader(start, stop), writer, stop - start))
    return StreamingResponse(body, status, headers, media_type=writer.media_type)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _wrap(chunks: AsyncIterator[bytes], writer: MultipartWriter, length: int) -> AsyncIterator[bytes]:
    head = writer.head(OCTET, length)
    try:
        async for chunk in chunks:
            yield head + chunk
            head = b""
    finally:
        await aclose(chunks)
    yield head + PART_END + writer.end()


async def _value_from_object(store: ObjectStore, inst: StoredInstance, path: list[str]) -> bytes:
    # Bulk data other than Pixel Data lies in the header: read only that far when it is known.
    index = inst.frames
    end = index.fragments[0] if index.fragments else index.pixel_offset
    data = await read_checked(store, inst, 0, min(end, inst.size) if end is not None else None)
    value = await asyncio.to_thread(dicom.value_at, data, path)
    if value is None:
        raise NotFound("No such bulk data in this instance")
    return value
