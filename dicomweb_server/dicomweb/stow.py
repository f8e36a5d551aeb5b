"""STOW-RS (PS3.18 §10.5): the HTTP handler; the ingest itself moved to ingest/session.py."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.ingest.session import DICOM_JSON, Ingest, store_response

__all__ = ["store_instances", "store_response"]


async def store_instances(request: Request) -> Response:
    """POST /dicomweb/studies[/{study}]."""
    state = request.app.state  # the study UID in the path, if any, is checked by app.uids_checked
    ingest = Ingest(
        state.settings,
        state.store,
        state.pool,
        request.state.tenant,
        request.path_params.get("study"),
        request.state.base_url,
    )
    body, status, headers = await ingest.run(
        request.headers.get("content-type"), request.headers.get("content-length"), request.stream()
    )
    request.state.study_uid = ingest.stored_study  # for the audit trail
    state.ingested.set()  # the index grew: let the statistics keeper look
    return Response(orjson.dumps(body), status, headers, media_type=DICOM_JSON)
