"""WADO-RS (PS3.18 §10.4): instances, metadata, bulk data and frames.

Everything is served from what ingest computed (the DICOM JSON, the frame index)
and streamed from object storage: a metadata request reads no object, a frame
request reads only that frame's bytes, and a study streams out one chunk at a
time however large it is.  The resource level comes from the route: one
handler per resource kind, whatever the level.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import db, dicom, frames, render, transcode
from .dicom_xml import to_xml
from .errors import BadRequest, NotAcceptable, NotFound
from .media import DICOM, DICOM_JSON, MULTIPART, Offer, negotiate
from .multipart import closing, multipart_type, new_boundary, part_head
from .storage import ObjectStore

OCTET = frames.OCTET_STREAM
ZIP = "application/zip"
DICOM_XML = "application/dicom+xml"
EVRLE = transcode.EXPLICIT_VR_LITTLE_ENDIAN
PIXEL_DATA = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float and Double Float Pixel Data


@dataclass(frozen=True)
class Scope:
    """The resource a request names: a study, a series of it, or an instance of that."""

    study: str
    series: str | None = None
    sop: str | None = None


def scope_of(request: Request) -> Scope:
    p = request.path_params
    return Scope(p["study"], p.get("series"), p.get("instance"))


def accept_of(request: Request) -> str | None:
    """The ``accept`` query parameter overrides the Accept header (PS3.18 Table 8.3.3.1-2)."""
    return request.query_params.get("accept") or request.headers.get("accept")


READ_AHEAD = 2  # chunks read from storage ahead of the socket


async def read_ahead(chunks: AsyncIterator[bytes], depth: int = READ_AHEAD) -> AsyncIterator[bytes]:
    """Read the next chunks from storage while the current one is being sent.

    Without this, a response alternates between waiting for a file read (in a worker thread)
    and waiting for the socket; with it, both go on at once.  At most ``depth`` chunks wait in
    memory.  When the client goes away the reader is cancelled and its object closed.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put(exc)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    task = asyncio.ensure_future(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _read_all(store: ObjectStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


# -- instances ----------------------------------------------------------------------


def _convertible(inst: db.StoredInstance, syntax: str, limit: int) -> bool:
    """Whether an instance can go out in ``syntax``: as stored, or transcoded in memory
    when it is no larger than the configured limit."""
    stored = inst.transfer_syntax_uid
    return syntax == stored or (inst.size <= limit and transcode.can_transcode(stored, syntax))


def _wanted_syntax(inst: db.StoredInstance, requested: str | None, limit: int) -> str:
    """The syntax an instance goes out in: as stored for ``*``; Explicit VR Little Endian by
    default (PS3.18 §8.7.3.5.2) when it can be produced, otherwise as stored, never a 406."""
    if requested == "*":
        return inst.transfer_syntax_uid
    if requested is None:
        return EVRLE if _convertible(inst, EVRLE, limit) else inst.transfer_syntax_uid
    return requested


def _producible(instances: list[db.StoredInstance], limit: int) -> Callable[[Offer, str | None], bool]:
    def check(offer: Offer, syntax: str | None) -> bool:
        return syntax in (None, "*") or all(_convertible(i, syntax, limit) for i in instances)

    return check


async def _dicom_bytes(store: ObjectStore, inst: db.StoredInstance, syntax: str) -> AsyncIterator[bytes]:
    """An instance's bytes in ``syntax``: streamed as stored, or transcoded in a worker thread."""
    if syntax == inst.transfer_syntax_uid:
        async for chunk in store.read(inst.object_key):
            yield chunk
        return
    data = await _read_all(store, inst.object_key)
    yield await asyncio.to_thread(transcode.to_transfer_syntax, data, syntax)


async def retrieve(request: Request) -> Response:
    """GET /studies/{s}[/series/{se}[/instances/{i}]]: the instances, streamed."""
    state = request.app.state
    scope = scope_of(request)
    instances = await db.find_instances(
        state.pool, request.state.tenant, scope.study, scope.series, scope.sop
    )
    if not instances:
        raise NotFound("No such study, series or instance")
    offers = [Offer(MULTIPART, DICOM), Offer(ZIP)]
    if scope.sop is not None:
        offers.append(Offer(DICOM))
    limit = state.settings.max_transcode_bytes
    choice = negotiate(accept_of(request), offers, _producible(instances, limit))
    plan = [(i, _wanted_syntax(i, choice.transfer_syntax, limit)) for i in instances]
    store: ObjectStore = state.store
    media = choice.offer.media_type
    if media == DICOM:
        inst, syntax = plan[0]
        if syntax == inst.transfer_syntax_uid:
            return StreamingResponse(
                read_ahead(store.read(inst.object_key)),
                media_type=DICOM,
                headers={"Content-Length": str(inst.size)},
            )
        data = await _transcode_one(store, inst, syntax)
        return Response(data, media_type=f"{DICOM}; transfer-syntax={syntax}")
    if media == ZIP:
        name = (scope.sop or scope.series or scope.study) + ".zip"
        return StreamingResponse(
            read_ahead(_zip(store, plan)),
            media_type=ZIP,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    boundary = new_boundary()
    headers = {}
    if all(syntax == inst.transfer_syntax_uid for inst, syntax in plan):
        # Every part's size is known: a Content-Length spares the chunked framing (and its copies).
        heads = sum(len(part_head(boundary, f"{DICOM}; transfer-syntax={s}", i.size)) + 2 for i, s in plan)
        headers["Content-Length"] = str(heads + sum(i.size for i, _ in plan) + len(closing(boundary)))
    return StreamingResponse(
        read_ahead(_dicom_parts(store, plan, boundary)),
        headers=headers,
        media_type=multipart_type(DICOM, boundary),
    )


async def _transcode_one(store: ObjectStore, inst: db.StoredInstance, syntax: str) -> bytes:
    data = await _read_all(store, inst.object_key)
    try:
        return await asyncio.to_thread(transcode.to_transfer_syntax, data, syntax)
    except transcode.TranscodeError as exc:
        raise NotAcceptable(f"The instance cannot be converted to {syntax}: {exc}") from None


async def _dicom_parts(
    store: ObjectStore, plan: list[tuple[db.StoredInstance, str]], boundary: str
) -> AsyncIterator[bytes]:
    for inst, syntax in plan:
        ctype = f"{DICOM}; transfer-syntax={syntax}"
        if syntax == inst.transfer_syntax_uid:
            yield part_head(boundary, ctype, inst.size)
            async for chunk in store.read(inst.object_key):
                yield chunk
        else:
            data = b"".join([c async for c in _dicom_bytes(store, inst, syntax)])
            yield part_head(boundary, ctype, len(data)) + data
        yield b"\r\n"
    yield closing(boundary)


class _Sink:
    """A write-only file for zipfile: what it writes is handed on, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


async def _zip(store: ObjectStore, plan: list[tuple[db.StoredInstance, str]]) -> AsyncIterator[bytes]:
    """Sup 211 application/zip: one stored (uncompressed) entry per instance, streamed.

    The sink cannot seek, so zipfile writes each entry's sizes in a data descriptor
    after its bytes; entries larger than 2 GiB use ZIP64.
    """
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True)
    stamp = time.gmtime()[:6]
    for inst, syntax in plan:
        info = zipfile.ZipInfo(f"{inst.series_uid}/{inst.sop_uid}.dcm", date_time=stamp)
        with archive.open(info, "w", force_zip64=inst.size > 0x7FFF0000) as entry:
            async for chunk in _dicom_bytes(store, inst, syntax):
                entry.write(chunk)
                yield sink.take()
        yield sink.take()
    archive.close()
    yield sink.take()


# -- metadata -----------------------------------------------------------------------

METADATA_OFFERS = [Offer(DICOM_JSON), Offer("application/json"), Offer(MULTIPART, DICOM_XML)]


def absolute_bulkdata(text: str, base: str) -> str:
    """Stored BulkDataURIs are paths ("/dicomweb/..."): make them absolute for this server."""
    return text.replace('"BulkDataURI": "/dicomweb/', f'"BulkDataURI": "{base}/dicomweb/')


def etag(body: bytes, variant: str) -> str:
    return '"' + hashlib.blake2b(body + variant.encode(), digest_size=16).hexdigest() + '"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against each listed tag, or ``*``."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or tag in tags


async def metadata(request: Request) -> Response:
    """GET {study|series|instance}/metadata: the DICOM JSON kept at ingest, no object read."""
    state = request.app.state
    choice = negotiate(accept_of(request), METADATA_OFFERS)
    scope = scope_of(request)
    text = await db.metadata(state.pool, request.state.tenant, scope.study, scope.series, scope.sop)
    if text is None:
        raise NotFound("No such study, series or instance")
    body = absolute_bulkdata(text, request.state.base_url).encode()
    media = choice.offer.media_type
    tag = etag(body, media)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if not_modified(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    if media != MULTIPART:
        return Response(body, headers=headers, media_type=media)
    boundary = new_boundary()
    parts = [part_head(boundary, DICOM_XML) + to_xml(ds) + b"\r\n" for ds in orjson.loads(body)]
    return Response(
        b"".join(parts) + closing(boundary), headers=headers, media_type=multipart_type(DICOM_XML, boundary)
    )


# -- frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSource:
    """One instance's frames: where they lie, and what they are."""

    inst: db.StoredInstance
    info: transcode.PixelInfo

    @property
    def encapsulated(self) -> bool:
        return self.inst.transfer_syntax_uid in frames.FRAME_MEDIA_TYPES

    @property
    def count(self) -> int:
        return self.info.number_of_frames or 1

    def ranges(self, frame: int) -> list[tuple[int, int]] | None:
        """Byte ranges of a frame in the object, or None when the object must be parsed instead."""
        syntax = self.inst.transfer_syntax_uid
        if not self.encapsulated and syntax not in frames.NATIVE_LITTLE_ENDIAN:
            return None  # big endian or deflated: the stored bytes are not the frame's bytes
        length = 0 if self.encapsulated else transcode.native_frame_length(self.info)
        if not self.encapsulated and (self.info.bits_allocated == 1 and length * 8 != self._bits()):
            return None  # single-bit frames that do not end on a byte boundary
        return frames.frame_ranges(self.inst.frames, frame, length)

    def _bits(self) -> int:
        i = self.info
        return i.rows * i.columns * i.samples_per_pixel


async def _frame_source(request: Request) -> FrameSource:
    state = request.app.state
    scope = scope_of(request)
    assert scope.series is not None and scope.sop is not None
    inst = await db.find_instance(
        state.pool, request.state.tenant, scope.study, scope.series, scope.sop, metadata=True
    )
    if inst is None:
        raise NotFound("No such instance")
    assert inst.metadata is not None
    meta = orjson.loads(inst.metadata)
    if not any(tag in meta for tag in PIXEL_DATA):
        raise BadRequest("The instance has no Pixel Data, so it has no frames")
    try:
        return FrameSource(inst, transcode.PixelInfo.from_json(meta))
    except transcode.TranscodeError as exc:
        raise NotAcceptable(f"Frames cannot be produced for this instance: {exc}") from None


def _frame_offers(source: FrameSource) -> list[Offer]:
    native = frames.FRAME_MEDIA_TYPES.get(source.inst.transfer_syntax_uid)
    return [Offer(MULTIPART, OCTET)] + ([Offer(MULTIPART, native)] if native else [])


def _frame_producible(source: FrameSource) -> Callable[[Offer, str | None], bool]:
    stored = source.inst.transfer_syntax_uid

    def check(offer: Offer, syntax: str | None) -> bool:
        if syntax in (None, "*", stored):
            return True
        # Uncompressed frames carry no VR: either little-endian native syntax names them.
        return (
            offer.part_type == OCTET
            and syntax in frames.NATIVE_LITTLE_ENDIAN
            and (not source.encapsulated or transcode.can_transcode(stored, EVRLE))
        )

    return check


async def retrieve_frames(request: Request) -> Response:
    """GET .../instances/{i}/frames/{list}: only the requested frames' bytes are read."""
    numbers = frames.parse_frame_list(request.path_params["frames"])
    return _frames_response(request, await _frame_source(request), numbers)


def _frames_response(
    request: Request, source: FrameSource, numbers: list[int], *, as_stored: bool = False
) -> Response:
    for n in numbers:
        if n > source.count:
            raise NotFound(f"Frame {n} does not exist: the instance has {source.count} frame(s)")
    choice = negotiate(accept_of(request), _frame_offers(source), _frame_producible(source))
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
            ctype = f"{frames.FRAME_MEDIA_TYPES[stored]}; transfer-syntax={stored}"
    else:
        ctype = f"{OCTET}; transfer-syntax={EVRLE}"
    boundary = new_boundary()
    return StreamingResponse(
        _frame_parts(request.app.state.store, source, numbers, as_stored, ctype, boundary),
        media_type=multipart_type(ctype.split(";")[0], boundary),  # RFC 2387: the parts' type
    )


async def _frame_parts(
    store: ObjectStore, source: FrameSource, numbers: list[int], as_stored: bool, ctype: str, boundary: str
) -> AsyncIterator[bytes]:
    fallback: list[bytes] | None = None
    for n in numbers:
        ranges = source.ranges(n)
        if ranges is None:
            if fallback is None:  # the object must be parsed: once per request
                fallback = await _frames_from_object(store, source, as_stored)
            data = fallback[n - 1]
        else:
            data = b"".join([await _read_all(store, source.inst.object_key, a, b) for a, b in ranges])
            if not as_stored:
                syntax = source.inst.transfer_syntax_uid
                data = await asyncio.to_thread(transcode.decode_frame, data, syntax, source.info)
        yield part_head(boundary, ctype, len(data)) + data + b"\r\n"
    yield closing(boundary)


async def _frames_from_object(store: ObjectStore, source: FrameSource, as_stored: bool) -> list[bytes]:
    """Every frame of an instance whose frame index cannot answer (deflated, big endian, an
    offset table ingest could not resolve): parse the stored object, once."""
    data = await _read_all(store, source.inst.object_key)
    return await asyncio.to_thread(transcode.split_frames, data, as_stored)


# -- bulk data ----------------------------------------------------------------------

BULK_OFFERS = [Offer(MULTIPART, OCTET), Offer(OCTET)]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range (RFC 9110 §14.2) as ``(start, stop)``; None to send everything.

    Several ranges are answered with the whole value, which the RFC allows.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            start, stop = max(size - int(last), 0), size
        else:
            start = int(first)
            stop = min(int(last) + 1, size) if last else size
    except ValueError:
        return None
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
    choice = negotiate(accept_of(request), BULK_OFFERS)
    store: ObjectStore = request.app.state.store
    source = await _frame_source(request) if len(path) == 1 and path[0].upper() in PIXEL_DATA else None
    if source is not None and source.encapsulated:
        # Compressed Pixel Data has no single value: its frames, as stored (PS3.18 §8.7.3.3.2).
        return _frames_response(request, source, list(range(1, source.count + 1)), as_stored=True)
    if source is not None and source.inst.frames.pixel_offset is not None and source.ranges(1) is not None:
        offset, length = source.inst.frames.pixel_offset, source.inst.frames.pixel_length or 0
        value_reader: Callable[[int, int], AsyncIterator[bytes]] = lambda a, b: store.read(  # noqa: E731
            source.inst.object_key, offset + a, offset + b
        )
    else:
        value = await _value_from_object(request, path)
        length = len(value)
        value_reader = lambda a, b: _once(value[a:b])  # noqa: E731
    span = parse_range(request.headers.get("range"), length)
    start, stop = span or (0, length)
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
    if choice.offer.media_type == OCTET:
        headers["Content-Length"] = str(stop - start)
        return StreamingResponse(value_reader(start, stop), status, headers, media_type=OCTET)
    boundary = new_boundary()
    return StreamingResponse(
        _wrap(value_reader(start, stop), boundary, stop - start),
        status,
        headers,
        media_type=multipart_type(OCTET, boundary),
    )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _wrap(chunks: AsyncIterator[bytes], boundary: str, length: int) -> AsyncIterator[bytes]:
    yield part_head(boundary, OCTET, length)
    async for chunk in chunks:
        yield chunk
    yield b"\r\n" + closing(boundary)


async def _value_from_object(request: Request, path: list[str]) -> bytes:
    state = request.app.state
    scope = scope_of(request)
    assert scope.series is not None and scope.sop is not None
    inst = await db.find_instance(state.pool, request.state.tenant, scope.study, scope.series, scope.sop)
    if inst is None:
        raise NotFound("No such instance")
    # Bulk data other than Pixel Data lies in the header: read only that far when it is known.
    index = inst.frames
    end = index.fragments[0] if index.fragments else index.pixel_offset
    data = await _read_all(state.store, inst.object_key, 0, end)
    value = await asyncio.to_thread(dicom.value_at, data, path)
    if value is None:
        raise NotFound("No such bulk data in this instance")
    return value


# -- rendered and thumbnail ---------------------------------------------------------

RENDER_OFFERS = [Offer("image/jpeg"), Offer("image/png"), Offer("image/gif")]


def _has_pixels(inst: db.StoredInstance) -> bool:
    return inst.frames.pixel_offset is not None or inst.frames.fragments is not None


def representative(instances: list[db.StoredInstance]) -> db.StoredInstance:
    """The instance that stands for a study or series in a thumbnail: the middle image of
    the first series that has images (PS3.18 §10.4.1.1.3 leaves the choice to the server)."""
    images = [i for i in instances if _has_pixels(i)] or instances
    first = [i for i in images if i.series_uid == images[0].series_uid]
    return first[len(first) // 2]


async def rendered(request: Request, *, thumbnail: bool = False) -> Response:
    """GET {study|series|instance|frames}/rendered and /thumbnail: consumer-ready images."""
    state = request.app.state
    scope = scope_of(request)
    listed = request.path_params.get("frames")
    numbers = frames.parse_frame_list(listed) if listed is not None else [1]
    choice = negotiate(accept_of(request), RENDER_OFFERS)
    media = choice.offer.media_type
    params = dict(request.query_params)
    settings = render.thumbnail_params(params, media) if thumbnail else render.parse_params(params, media)
    instances = await db.find_instances(
        state.pool, request.state.tenant, scope.study, scope.series, scope.sop
    )
    if not instances:
        raise NotFound("No such study, series or instance")
    if thumbnail or scope.sop is not None:
        targets = [(representative(instances), n) for n in (numbers[:1] if thumbnail else numbers)]
    else:
        targets = [(i, 1) for i in instances if _has_pixels(i)]
    images = [await _render(state.store, inst, n, settings) for inst, n in targets]
    if len(images) == 1:
        return Response(images[0], media_type=media)
    boundary = new_boundary()
    body = b"".join(part_head(boundary, media, len(img)) + img + b"\r\n" for img in images)
    return Response(body + closing(boundary), media_type=multipart_type(media, boundary))


async def _render(
    store: ObjectStore, inst: db.StoredInstance, frame: int, params: render.RenderParams
) -> bytes:
    data = await _read_all(store, inst.object_key)
    try:
        return await asyncio.to_thread(render.render, data, frame, params)
    except render.FrameOutOfRange:
        raise NotFound(f"Frame {frame} does not exist in this instance") from None
    except render.RenderError as exc:
        raise NotAcceptable(f"The instance cannot be rendered: {exc}") from None
