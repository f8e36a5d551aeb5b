"""WADO-RS instance retrieve (PS3.18 §10.4), streamed from object storage.

Only the instance resource is served for now; study/series retrieve,
metadata, frames and transcoding come with the Retrieve issue.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import db
from .errors import NotAcceptable, NotFound
from .media import DICOM, MULTIPART, Offer, negotiate
from .storage import ObjectStore

INSTANCE_OFFERS = [Offer(MULTIPART, DICOM), Offer(DICOM)]


async def retrieve_instance(request: Request) -> Response:
    """GET /dicomweb/studies/{study}/series/{series}/instances/{instance}."""
    state = request.app.state
    choice = negotiate(request.query_params.get("accept") or request.headers.get("accept"), INSTANCE_OFFERS)
    p = request.path_params
    found = await db.find_instance(state.pool, request.state.tenant, p["study"], p["series"], p["instance"])
    if found is None:
        raise NotFound("No such instance")
    ts = choice.transfer_syntax
    if ts not in (None, "*", found.transfer_syntax_uid):
        raise NotAcceptable(
            f"The instance is stored as {found.transfer_syntax_uid}; transcoding is not available"
        )
    if choice.offer.media_type == DICOM:
        return StreamingResponse(
            state.store.read(found.object_key),
            media_type=DICOM,
            headers={"Content-Length": str(found.size)},
        )
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _multipart(state.store, found.object_key, boundary, found.transfer_syntax_uid),
        headers={
            "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
        },
    )


async def _multipart(store: ObjectStore, key: str, boundary: str, ts: str) -> AsyncIterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={ts}\r\n\r\n".encode()
    async for chunk in store.read(key):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()
