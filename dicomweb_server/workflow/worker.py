"""The analysis workers' routes (issue #12 §3): ``POST /api/v1/jobs/claim``,
``/jobs/{job}/heartbeat``, ``/jobs/{job}/complete`` and ``/jobs/{job}/fail``.

Thin: parse, call workflow/analysis.py, answer.  A claim answers a job token with it (minted
by the access context, ``app.state.mint_job_token``): the worker reads its studies over
DICOMweb with it, and nothing else, until the lease ends.  A completion is multipart/form-data
(RFC 7578): ``pdf`` (a PDF, ``%PDF-``), ``json`` (a JSON object) and optionally ``csv``; the
objects are stored under the order's tenant before the one transaction that records them.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import orjson
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message

from dicomweb_server.db.reports import StoredObject
from dicomweb_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from dicomweb_server.storage.base import ObjectStore, new_key
from dicomweb_server.workflow import analysis
from dicomweb_server.workflow.api import JSONAnswer, actor, json_body, rfc3339

MAX_REPORT_BYTES = 512 * 1024 * 1024  # a completion's whole body
MAX_FIELD_BYTES = 16 * 1024 * 1024  # a part sent without a filename (the JSON, say)
MAX_WORKER_NAME = 200
CHUNK = 1024 * 1024


def _token(request: Request, job_id: str, tenant: str, studies: list[str], until: datetime) -> str:
    mint = request.app.state.mint_job_token
    return str(mint(request.state.client_id, tenant, studies, int(until.timestamp()), job=job_id))


def _studies(request: Request, studies: list[str]) -> list[dict[str, str]]:
    base = request.state.base_url
    out = []
    for uid in studies:
        url = f"{base}/dicomweb/studies/{uid}"
        out.append({"study_uid": uid, "url": url, "metadata_url": url + "/metadata"})
    return out


async def claim(request: Request) -> Response:
    """The next pending order (urgent first, then oldest) as a job, or 204 after ``wait`` s."""
    body = await json_body(request, required=False)
    unknown = set(body) - {"worker", "wait"}
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}")
    worker = body.get("worker")
    if not isinstance(worker, str) or not 0 < len(worker) <= MAX_WORKER_NAME:
        raise BadRequest(f"worker must be a name of 1 to {MAX_WORKER_NAME} characters")
    wait = body.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= analysis.MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds from 0 to {analysis.MAX_WAIT:g}")
    state = request.app.state
    got = await analysis.claim(
        state.pool,
        state.settings.workflow,
        worker,
        request.state.client_id,
        actor(request),
        float(wait),
        request.is_disconnected,
    )
    if got is None:
        if await request.is_disconnected():
            raise ClientDisconnect  # the worker left during its long poll: nothing was claimed
        return Response(status_code=204)
    return JSONAnswer(
        {
            "id": got.job_id,
            "order_id": got.order_id,
            "priority": got.priority,
            "attempt": got.attempt,
            "lease_expires_at": rfc3339(got.lease_expires_at),
            "studies": _studies(request, got.studies),
            "access_token": _token(request, got.job_id, got.tenant, got.studies, got.lease_expires_at),
            "token_type": "Bearer",
        }
    )


async def heartbeat(request: Request) -> Response:
    """The lease again in full from now, with a fresh job token for it; 409 when it is lost."""
    job_id = request.path_params["job"]
    state = request.app.state
    job, until, studies = await analysis.heartbeat(
        state.pool, state.settings.workflow, job_id, request.state.client_id
    )
    return JSONAnswer(
        {
            "id": job_id,
            "lease_expires_at": rfc3339(until),
            "access_token": _token(request, job_id, job.tenant, studies, until),
        }
    )


async def fail(request: Request) -> Response:
    """The worker gives up on the job: retried while attempts are left if ``retryable``."""
    body = await json_body(request)
    unknown = set(body) - {"reason", "retryable"}
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}")
    reason, retryable = body.get("reason"), body.get("retryable", False)
    if not isinstance(reason, str) or not 0 < len(reason) <= 2000:
        raise BadRequest("reason must be a text of 1 to 2000 characters")
    if not isinstance(retryable, bool):
        raise BadRequest("retryable must be true or false")
    state = request.app.state
    job, target = await analysis.fail(
        state.pool,
        state.settings.workflow,
        request.path_params["job"],
        request.state.client_id,
        actor(request),
        reason,
        retryable,
    )
    return JSONAnswer({"id": job.id, "order_id": job.order_id, "status": "failed", "order_status": target})


async def complete(request: Request) -> Response:
    """Store the report's objects, then record them; a repeat answers the same, storing nothing."""
    job_id = request.path_params["job"]
    state = request.app.state
    job = await analysis.open_job(state.pool, job_id, request.state.client_id)
    if job.state == "completed" and job.result is not None:
        return JSONAnswer(job.result)  # before the body is read: nothing is stored twice
    form = await _read_form(request)
    stored: list[StoredObject] = []
    try:
        parts = await _parts(form)
        for name in ("pdf", "json", "csv"):
            if parts.get(name) is not None:
                stored.append(await _store(state.store, job.tenant, parts[name]))
        csv = stored[2] if len(stored) == 3 else None
        answer, kept = await analysis.complete(
            state.pool, job_id, request.state.client_id, actor(request), stored[0], stored[1], csv
        )
    except BaseException:
        await _discard(state.store, stored)
        raise
    finally:
        await form.close()  # the spooled upload files
    if not kept:  # a concurrent completion won: its answer, ours discarded
        await _discard(state.store, stored)
    return JSONAnswer(answer)


async def _read_form(request: Request) -> FormData:
    """The completion's form, its body capped as it streams in (RFC 7578)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise UnsupportedMediaType("A completion is multipart/form-data with pdf, json and csv parts")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_REPORT_BYTES:
        raise PayloadTooLarge(f"A completion is at most {MAX_REPORT_BYTES} bytes")
    capped = Request(request.scope, _capped(request))
    try:
        form = await capped.form(max_files=3, max_fields=3, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as exc:
        raise BadRequest(f"The form cannot be read: {exc.detail}") from None
    return form


async def _parts(form: FormData) -> dict[str, Any]:
    """The completion's parts, checked: a PDF, a JSON object, optionally a CSV."""
    unknown = set(form.keys()) - {"pdf", "json", "csv"}
    if unknown:
        raise BadRequest(f"Unknown part(s): {', '.join(sorted(unknown))}")
    names = [name for name, _ in form.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # which of two PDFs is the report cannot be guessed
        raise BadRequest(f"Part(s) sent more than once: {', '.join(repeated)}")
    pdf, doc, csv = form.get("pdf"), form.get("json"), form.get("csv")
    if pdf is None or doc is None:
        raise BadRequest("The pdf and json parts are required")
    if not isinstance(pdf, UploadFile) or await pdf.read(5) != b"%PDF-":
        raise BadRequest("The pdf part must be a PDF file (starting %PDF-)")
    await pdf.seek(0)
    raw = doc.encode() if isinstance(doc, str) else await doc.read(MAX_FIELD_BYTES + 1)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if len(raw) > MAX_FIELD_BYTES or not isinstance(value, dict):
        raise BadRequest(f"The json part must be a JSON object of at most {MAX_FIELD_BYTES} bytes")
    text: bytes | None = None
    if isinstance(csv, UploadFile):
        text = await csv.read(MAX_FIELD_BYTES + 1)
    elif csv is not None:
        text = csv.encode()
    if text is not None and (len(text) > MAX_FIELD_BYTES or not _utf8(text)):
        raise BadRequest(f"The csv part must be UTF-8 text of at most {MAX_FIELD_BYTES} bytes")
    return {"pdf": pdf, "json": raw, "csv": text}


def _utf8(data: bytes) -> bool:
    """The CSV is served as ``text/csv; charset=utf-8`` (RFC 7111): it must be UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _capped(request: Request) -> Any:
    """The body's receive, refusing more than MAX_REPORT_BYTES as it streams in."""
    seen = 0
    receive = request.receive

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_REPORT_BYTES:
            raise PayloadTooLarge(f"A completion is at most {MAX_REPORT_BYTES} bytes")
        return message

    return counting


async def _store(store: ObjectStore, tenant: str, source: UploadFile | bytes) -> StoredObject:
    key = new_key(tenant)
    writer = store.writer(key)
    size = 0
    try:
        if isinstance(source, bytes):
            await writer.write(source)
            size = len(source)
        else:
            while chunk := await source.read(CHUNK):
                await writer.write(chunk)
                size += len(chunk)
        sha256 = await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    return StoredObject(key, size, sha256)


async def _discard(store: ObjectStore, stored: list[StoredObject]) -> None:
    for obj in stored:
        with contextlib.suppress(Exception):
            await store.delete(obj.key)
