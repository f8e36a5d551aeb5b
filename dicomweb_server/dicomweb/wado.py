"""WADO-RS (PS3.18 §10.4): instances and metadata; frames and bulk data are in wado_frames,
rendered images and thumbnails in wado_render.

Everything is served from what ingest computed (the DICOM JSON, the frame index)
and streamed from object storage: a metadata request reads no object, a frame
request reads only that frame's bytes, and a study streams out one chunk at a
time however large it is.  The resource level comes from the route: one
handler per resource kind, whatever the level.

Each instance's representation is settled before its part starts: it is transcoded
whole (in a worker thread) or streamed as stored, and an instance that does not convert
goes out as stored, its part header naming its real transfer syntax.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.db import retrieve as index
from dicomweb_server.db.pool import connection
from dicomweb_server.db.retrieve import StoredInstance
from dicomweb_server.dicom import transcode
from dicomweb_server.dicom.dicom_json import absolute_bulkdata
from dicomweb_server.dicom.dicom_xml import to_xml
from dicomweb_server.dicom.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN
from dicomweb_server.dicomweb.wado_frames import retrieve_bulkdata, retrieve_frames
from dicomweb_server.dicomweb.wado_render import rendered
from dicomweb_server.dicomweb.wado_stream import (
    aclose,
    first_chunk,
    guarded,
    primed,
    read_ahead,
    read_checked,
    scope_of,
    stream_checked,
)
from dicomweb_server.errors import NotAcceptable, NotFound
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.web.media import DICOM, DICOM_JSON, MULTIPART, Offer, negotiate_request
from dicomweb_server.web.multipart import PART_END, MultipartWriter

__all__ = ["metadata", "rendered", "retrieve", "retrieve_bulkdata", "retrieve_frames"]

log = logging.getLogger("dicomweb_server.dicomweb.wado")

ZIP = "application/zip"
DICOM_XML = "application/dicom+xml"
EVRLE = EXPLICIT_VR_LITTLE_ENDIAN


# -- instances ----------------------------------------------------------------------


def _convertible(inst: StoredInstance, syntax: str, limit: int) -> bool:
    """Whether an instance can go out in ``syntax``: as stored, or transcoded in memory
    when it is no larger than the configured limit."""
    stored = inst.transfer_syntax_uid
    return syntax == stored or (inst.size <= limit and transcode.can_transcode(stored, syntax))


def _wanted_syntax(inst: StoredInstance, requested: str | None, limit: int) -> str:
    """The syntax an instance goes out in: as stored for ``*``; Explicit VR Little Endian by
    default (PS3.18 §8.7.3.5.2) when it can be produced, otherwise as stored, never a 406."""
    if requested == "*":
        return inst.transfer_syntax_uid
    if requested is None:
        return EVRLE if _convertible(inst, EVRLE, limit) else inst.transfer_syntax_uid
    return requested


def _producible(instances: list[StoredInstance], limit: int) -> Callable[[Offer, str | None], bool]:
    def check(offer: Offer, syntax: str | None) -> bool:
        return syntax in (None, "*") or all(_convertible(i, syntax, limit) for i in instances)

    return check


@dataclass
class _Part:
    """One instance as it goes out: its syntax, its size, its first chunk read, the rest to stream."""

    syntax: str
    size: int
    first: bytes
    rest: AsyncIterator[bytes]

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self.first:
                yield self.first
            async for chunk in self.rest:
                yield chunk
        finally:
            await aclose(self.rest)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


async def _prepare(store: ObjectStore, inst: StoredInstance, syntax: str, *, strict: bool) -> _Part:
    """Settle how an instance goes out before its part starts.

    As stored: its first chunk is read (and the object's size checked when it fits in one).
    Transcoded: read whole and converted in a worker thread; if the conversion fails, the
    instance goes out as stored, unless ``strict`` (one instance, an explicit syntax asked
    for), which is a 406.  A damaged object is a ``DamagedObject`` either way.
    """
    stored = inst.transfer_syntax_uid
    if syntax == stored:
        rest = stream_checked(store, inst)
        return _Part(stored, inst.size, await first_chunk(rest), rest)
    data = await read_checked(store, inst)
    try:
        out = await asyncio.to_thread(transcode.to_transfer_syntax, data, syntax)
    except transcode.TranscodeError as exc:
        if strict:
            raise NotAcceptable(f"The instance cannot be converted to {syntax}: {exc}") from None
        log.warning(
            "instance sent as stored: it does not convert",
            extra={
                "event": "transcode_failed",
                "object_key": inst.object_key,
                "target": syntax,
                "error": type(exc.__cause__).__name__,
            },
        )
        return _Part(stored, len(data), data, _nothing())
    return _Part(syntax, len(out), out, _nothing())


async def retrieve(request: Request) -> Response:
    """GET /studies/{s}[/series/{se}[/instances/{i}]]: the instances, streamed."""
    state = request.app.state
    scope = scope_of(request)
    async with connection(state.pool) as conn:
        instances = await index.find_instances(
            conn, request.state.tenant, scope.study, scope.series, scope.sop
        )
    if not instances:
        raise NotFound("No such study, series or instance")
    offers = [Offer(MULTIPART, DICOM), Offer(ZIP)]
    if scope.sop is not None:
        offers.append(Offer(DICOM))
    limit = state.settings.dicomweb.max_transcode_bytes
    choice = negotiate_request(request, offers, _producible(instances, limit))
    plan = [(i, _wanted_syntax(i, choice.transfer_syntax, limit)) for i in instances]
    # One instance asked for in an explicit syntax: a 406 if it does not convert after all.
    strict = scope.sop is not None and choice.transfer_syntax not in (None, "*")
    store: ObjectStore = state.store
    media = choice.offer.media_type
    if media == DICOM:
        inst, syntax = plan[0]
        part = await _prepare(store, inst, syntax, strict=strict)
        return StreamingResponse(
            read_ahead(guarded(request, part.first, part.rest)),
            media_type=f"{DICOM}; transfer-syntax={part.syntax}",
            headers={"Content-Length": str(part.size)},
        )
    if media == ZIP:
        name = (scope.sop or scope.series or scope.study) + ".zip"
        return StreamingResponse(
            read_ahead(await primed(request, _zip(store, plan, strict))),
            media_type=ZIP,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    writer = MultipartWriter(DICOM)
    headers = {}
    if all(syntax == inst.transfer_syntax_uid for inst, syntax in plan):
        # Every part's size is known: a Content-Length spares the chunked framing (and its copies).
        sizes = [(f"{DICOM}; transfer-syntax={syntax}", inst.size) for inst, syntax in plan]
        headers["Content-Length"] = str(writer.size(sizes))
    return StreamingResponse(
        read_ahead(await primed(request, _dicom_parts(store, plan, writer, strict))),
        headers=headers,
        media_type=writer.media_type,
    )


async def _dicom_parts(
    store: ObjectStore, plan: list[tuple[StoredInstance, str]], writer: MultipartWriter, strict: bool
) -> AsyncIterator[bytes]:
    for inst, syntax in plan:
        part = await _prepare(store, inst, syntax, strict=strict)
        yield writer.head(f"{DICOM}; transfer-syntax={part.syntax}", part.size)
        chunks = part.chunks()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await aclose(chunks)
        yield PART_END
    yield writer.end()


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


async def _zip(
    store: ObjectStore, plan: list[tuple[StoredInstance, str]], strict: bool
) -> AsyncIterator[bytes]:
    """Sup 211 application/zip: one stored (uncompressed) entry per instance, streamed.

    The sink cannot seek, so zipfile writes each entry's sizes in a data descriptor
    after its bytes; entries larger than 2 GiB use ZIP64.
    """
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True)
    stamp = time.gmtime()[:6]
    for inst, syntax in plan:
        part = await _prepare(store, inst, syntax, strict=strict)
        info = zipfile.ZipInfo(f"{inst.series_uid}/{inst.sop_uid}.dcm", date_time=stamp)
        chunks = part.chunks()
        try:
            with archive.open(info, "w", force_zip64=part.size > 0x7FFF0000) as entry:
                async for chunk in chunks:
                    entry.write(chunk)
                    yield sink.take()
        finally:
            await aclose(chunks)
        yield sink.take()
    archive.close()
    yield sink.take()


# -- metadata -----------------------------------------------------------------------

METADATA_OFFERS = [Offer(DICOM_JSON), Offer("application/json"), Offer(MULTIPART, DICOM_XML)]


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
    choice = negotiate_request(request, METADATA_OFFERS)
    scope = scope_of(request)
    async with connection(state.pool) as conn:
        text = await index.metadata(conn, request.state.tenant, scope.study, scope.series, scope.sop)
    if text is None:
        raise NotFound("No such study, series or instance")
    # Stored BulkDataURIs are paths: absolute for the URL this request reached.
    body = absolute_bulkdata(text.encode(), request.state.base_url)
    media = choice.offer.media_type
    tag = etag(body, media)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if not_modified(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    if media != MULTIPART:
        return Response(body, headers=headers, media_type=media)
    writer = MultipartWriter(DICOM_XML)
    parts = writer.body(to_xml(ds) for ds in orjson.loads(body))
    return Response(parts, headers=headers, media_type=writer.media_type)
