"""STOW-RS (PS3.18 §10.5): the HTTP end of ingest.

The handler reads the body through the multipart reader, turns its events into calls on an
``IngestSession`` (which stores, hashes, scans, makes durable and indexes), and maps the session's
``Outcome`` to the Store Instances Response (PS3.18 §10.5.3, Table I.1-1) and 200/202/409.  What
counts against the request (body size, the multipart framing) is checked here; everything that
happens to an instance is the session's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from dicomweb_server import metrics
from dicomweb_server.dicom import resources
from dicomweb_server.dicom.part10 import Failure
from dicomweb_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from dicomweb_server.ingest.origin import STOW_RS, Origin
from dicomweb_server.ingest.outcome import Outcome
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.web.context import STUDY_UID
from dicomweb_server.web.multipart import MultipartReader, PartData, PartStart, parse_media_type

DICOM_JSON = "application/dicom+json"
EMPTY_BODY = "empty request body: send a DICOM PS3.10 file or a multipart/related body"


class Stored(Protocol):
    """What the response names of a stored instance."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...


class StoreResponse(Response):
    """A Store Instances Response that carries, as data, the one study it stored into (or None):
    the audit trail reads it from the response's start message (``STUDY_UID``), not from a side
    channel on the request."""

    media_type = DICOM_JSON

    def __init__(self, body: dict[str, Any], status: int, headers: dict[str, str], study_uid: str | None):
        super().__init__(orjson.dumps(body), status, headers)
        self.study_uid = study_uid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message[STUDY_UID] = self.study_uid
            await send(message)

        await super().__call__(scope, receive, tagged)


async def store_instances(request: Request) -> Response:
    """POST /dicomweb/studies[/{study}]."""
    state = request.app.state  # the study UID in the path, if any, is checked by app.uids_checked
    settings = state.settings.ingest
    study = request.path_params.get("study")
    origin = Origin(STOW_RS, getattr(request.state, "client_id", None), peer=_peer(request))
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        raise PayloadTooLarge(f"Request body exceeds the limit of {settings.max_body_bytes} bytes")
    session = IngestSession(
        origin, request.state.tenant, study, settings, state.store, state.pool, state.settings.workflow
    )
    async with session:
        await _feed(session, request.headers.get("content-type"), request.stream(), settings.max_body_bytes)
        outcome = await session.finish()
    return store_result(request.state.base_url, study, outcome)


def _peer(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None


async def _feed(
    session: IngestSession, content_type: str | None, body: AsyncIterator[bytes], limit: int
) -> None:
    """Drive the session from the body: multipart/related part events, or one application/dicom part."""
    media = parse_media_type(content_type)
    received = 0
    if media.type == "multipart/related":
        part_type = media.params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaType(
                f'multipart/related type "{part_type}" is not supported; use application/dicom'
            )
        if "boundary" not in media.params:
            raise BadRequest("multipart/related Content-Type has no boundary parameter")
        reader = MultipartReader(media.params["boundary"])
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            for event in reader.feed(chunk):
                if isinstance(event, PartData):
                    await session.feed(event.data)
                elif isinstance(event, PartStart):
                    session.begin_part(parse_media_type(event.headers.get("content-type")).type)
                else:
                    await session.end_part()
        if received == 0:
            raise BadRequest(EMPTY_BODY)
        reader.close()
        if session.parts == 0:
            raise BadRequest("multipart body has no parts: it holds only the closing boundary delimiter")
    elif media.type == "application/dicom":
        session.begin_part()
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            if chunk:
                await session.feed(chunk)
        if received == 0:
            raise BadRequest(EMPTY_BODY)
        await session.end_part()
    else:
        raise UnsupportedMediaType(
            'STOW-RS accepts multipart/related; type="application/dicom" or application/dicom'
        )


def store_result(base: str, expected_study: str | None, outcome: Outcome) -> StoreResponse:
    """PS3.18 §10.5.3: 200 when every instance was stored, 202 when some were, 409 when none was;
    the Retrieve URL (and Content-Location) name the study when the request concerned one."""
    stored, failed = outcome.stored, list(outcome.failed)
    studies = outcome.studies or ({expected_study} if expected_study else set())
    study = next(iter(studies)) if len(studies) == 1 else None
    study_url = base + resources.path(study) if study else None
    metrics.stow_result(len(stored), sum(s.size for s in stored), [f.reason for f in failed])
    body = store_response(base, study_url, stored, failed)
    status = 200 if not failed else 202 if stored else 409
    headers = {"Content-Location": study_url} if study_url and stored else {}
    return StoreResponse(body, status, headers, study)


def store_response(
    base: str, study_url: str | None, stored: Sequence[Stored], failed: list[Failure]
) -> dict[str, Any]:
    """PS3.18 Table I.1-1 Store Instances Response Module; empty sequences are left out."""
    body: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [study_url]} if study_url else {"vr": "UR"}}
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [h.sop_class_uid]},
                    "00081155": {"vr": "UI", "Value": [h.sop_uid]},
                    "00081190": {
                        "vr": "UR",
                        "Value": [base + resources.path(h.study_uid, h.series_uid, h.sop_uid)],
                    },
                }
                for h in stored
            ],
        }
    identified = [f for f in failed if f.sop_instance_uid]
    other = [f for f in failed if not f.sop_instance_uid]
    if identified:
        body["00081198"] = {"vr": "SQ", "Value": [_failure_item(f) for f in identified]}
    if other:
        body["0008119A"] = {"vr": "SQ", "Value": [_failure_item(f) for f in other]}
    return body


def _failure_item(f: Failure) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if f.sop_instance_uid:
        item["00081150"] = {"vr": "UI", "Value": [f.sop_class_uid]} if f.sop_class_uid else {"vr": "UI"}
        item["00081155"] = {"vr": "UI", "Value": [f.sop_instance_uid]}
    item["00081197"] = {"vr": "US", "Value": [f.reason]}
    item["00000902"] = {"vr": "LO", "Value": [f.comment[:64]]}  # Error Comment: a readable reason
    return item
