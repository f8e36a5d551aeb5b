"""WADO-RS rendered images and thumbnails (PS3.18 §9.5, §9.6), from the stored objects.

A study or series renders as one image per instance: an instance that cannot be rendered
(its pixel data does not decode, its object is damaged) is left out and logged, and the
others still come back; only when none renders is the request an error.  A thumbnail is
drawn from the first candidate that renders.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.db.pool import connection
from dicomweb_server.db.retrieve import StoredInstance, find_instances
from dicomweb_server.dicom import frames, render
from dicomweb_server.dicomweb.wado_stream import read_checked, scope_of
from dicomweb_server.errors import DicomWebError, NotAcceptable, NotFound
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.web.media import Offer, negotiate_request
from dicomweb_server.web.multipart import MultipartWriter

log = logging.getLogger("dicomweb_server.dicomweb.wado")

RENDER_OFFERS = [Offer("image/jpeg"), Offer("image/png"), Offer("image/gif")]


def _has_pixels(inst: StoredInstance) -> bool:
    return inst.frames.pixel_offset is not None or inst.frames.fragments is not None


def candidates(instances: list[StoredInstance]) -> list[StoredInstance]:
    """The instances that may stand for a study or series in a thumbnail, best first: the middle
    image of the first series that has images (PS3.18 §10.4.1.1.3 leaves the choice to the
    server), then its neighbours, then the other images."""
    images = [i for i in instances if _has_pixels(i)] or instances
    first = [i for i in images if i.series_uid == images[0].series_uid]
    middle = len(first) // 2
    ordered = sorted(range(len(first)), key=lambda k: (abs(k - middle), k))
    chosen = [first[k] for k in ordered]
    return chosen + [i for i in images if i.series_uid != images[0].series_uid]


MAX_THUMBNAIL_TRIES = 3  # candidates tried before a thumbnail request gives up


async def rendered(request: Request, *, thumbnail: bool = False) -> Response:
    """GET {study|series|instance|frames}/rendered and /thumbnail: consumer-ready images."""
    state = request.app.state
    scope = scope_of(request)
    listed = request.path_params.get("frames")
    numbers = frames.parse_frame_list(listed) if listed is not None else [1]
    choice = negotiate_request(request, RENDER_OFFERS)
    media = choice.offer.media_type
    params = dict(request.query_params)
    settings = render.thumbnail_params(params, media) if thumbnail else render.parse_params(params, media)
    async with connection(state.pool) as conn:
        instances = await find_instances(conn, request.state.tenant, scope.study, scope.series, scope.sop)
    if not instances:
        raise NotFound("No such study, series or instance")
    store: ObjectStore = state.store
    if thumbnail:
        tries = candidates(instances)[:MAX_THUMBNAIL_TRIES] if scope.sop is None else instances[:1]
        return Response(await _first_rendered(store, tries, numbers[0], settings), media_type=media)
    if scope.sop is not None:
        images = [await _render(store, instances[0], n, settings) for n in numbers]
    else:
        images = await _each_rendered(store, [i for i in instances if _has_pixels(i)], settings)
    if len(images) == 1:
        return Response(images[0], media_type=media)
    writer = MultipartWriter(media)
    return Response(writer.body(images, length=True), media_type=writer.media_type)


async def _first_rendered(
    store: ObjectStore, tries: list[StoredInstance], frame: int, params: render.RenderParams
) -> bytes:
    error: DicomWebError | None = None
    for inst in tries:
        try:
            return await _render(store, inst, frame, params)
        except NotFound:
            raise  # the frame asked for does not exist
        except DicomWebError as exc:
            error = error or exc
    assert error is not None
    raise error


async def _each_rendered(
    store: ObjectStore, instances: list[StoredInstance], params: render.RenderParams
) -> list[bytes]:
    """One image per instance; those that cannot be rendered are left out (and logged)."""
    images, error = [], None
    for inst in instances:
        try:
            images.append(await _render(store, inst, 1, params))
        except DicomWebError as exc:
            if exc.status == 400:
                raise  # the request itself (a viewport outside the image) is wrong
            error = error or exc
            log.warning(
                "instance left out of a rendered study or series",
                extra={"event": "render_skipped", "object_key": inst.object_key, "status": exc.status},
            )
    if not images:
        raise error or NotFound("The study or series has no images to render")
    return images


async def _render(store: ObjectStore, inst: StoredInstance, frame: int, params: render.RenderParams) -> bytes:
    data = await read_checked(store, inst)
    try:
        return await asyncio.to_thread(render.render, data, frame, params)
    except render.FrameOutOfRange:
        raise NotFound(f"Frame {frame} does not exist in this instance") from None
    except render.RenderError as exc:
        raise NotAcceptable(f"The instance cannot be rendered: {exc}") from None
