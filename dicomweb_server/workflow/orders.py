"""The orders API (issue #12 §2): ``/api/v1/orders``: create (idempotent), list, read, cancel,
retry, and override a failed QC.

Handlers parse and answer; the service functions (workflow/ordering.py) own the transactions.
Another tenant's order is a 404 on every route: the tenant is part of every query.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.db import order_views
from dicomweb_server.db.pool import connection
from dicomweb_server.dicom.resources import is_valid_uid
from dicomweb_server.errors import BadRequest, NotFound
from dicomweb_server.lifecycle import Action, Status, study_status
from dicomweb_server.workflow import ordering
from dicomweb_server.workflow.api import (
    API,
    JSONAnswer,
    actor,
    decode_cursor,
    encode_cursor,
    json_body,
    limit_of,
    page,
    parse_time,
    query,
)

MAX_STUDIES = 100
MAX_EXTERNAL_ID = 64
MAX_NOTE = 1024
MAX_KEY = 255
PRIORITIES = ("routine", "urgent")
_FIELDS = {"studies", "priority", "external_id", "note"}
_FILTERS = {"status", "study_uid", "patient_id", "external_id", "created_after", "created_before"}


def _text(body: dict[str, Any], name: str, most: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= most:
        raise BadRequest(f"{name} must be a string of 1 to {most} characters")
    return value


def parse_request(body: dict[str, Any]) -> ordering.NewOrder:
    """The body of ``POST /api/v1/orders``, checked; unknown fields are a 400, never ignored."""
    unknown = set(body) - _FIELDS
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}")
    studies = body.get("studies")
    if not isinstance(studies, list) or not 1 <= len(studies) <= MAX_STUDIES:
        raise BadRequest(f"studies must be a list of 1 to {MAX_STUDIES} Study Instance UIDs")
    bad = [s for s in studies if not isinstance(s, str) or not is_valid_uid(s)]
    if bad:
        raise BadRequest("studies must be valid UIDs (PS3.5 §9.1)", fields={"invalid": [str(b) for b in bad]})
    if len(set(studies)) != len(studies):
        raise BadRequest("studies must be distinct")
    priority = body.get("priority", "routine")
    if priority not in PRIORITIES:
        raise BadRequest("priority must be 'routine' or 'urgent'")
    return ordering.NewOrder(
        tuple(studies), priority, _text(body, "external_id", MAX_EXTERNAL_ID), _text(body, "note", MAX_NOTE)
    )


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header): 1 to 255
    printable ASCII characters."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    if len(keys) > 1:  # the first or the second: a replay could not be told from a new order
        raise BadRequest("Idempotency-Key must be sent once")
    key = keys[0]
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")
    return key


async def create(request: Request) -> Response:
    """``POST /api/v1/orders``: 201 with ``Location`` for a new order, 200 for a replay of a key."""
    new = parse_request(await json_body(request))
    state = request.app.state
    order_id, created = await ordering.create(
        state.pool, request.state.tenant, new, idempotency_key(request), actor(request)
    )
    answer = await _detail(request, order_id)
    if created:
        answer.status_code = 201
        answer.headers["Location"] = _self(request, order_id)
    return answer


def _filters(request: Request) -> order_views.Filters:
    params = query(request, _FILTERS | {"limit", "cursor"})
    status = params.get("status")
    if status is not None and status not in set(Status):
        raise BadRequest(f"status must be one of: {', '.join(Status)}")
    study_uid = params.get("study_uid")
    if study_uid is not None and not is_valid_uid(study_uid):
        raise BadRequest("study_uid must be a valid UID (PS3.5 §9.1)")
    for name in ("patient_id", "external_id"):
        if len(params.get(name) or "") > MAX_EXTERNAL_ID:  # Patient ID is LO: 64 characters
            raise BadRequest(f"{name} is at most {MAX_EXTERNAL_ID} characters")
    return order_views.Filters(
        status=status,
        study_uid=study_uid,
        patient_id=params.get("patient_id"),
        external_id=params.get("external_id"),
        created_after=parse_time("created_after", params.get("created_after")),
        created_before=parse_time("created_before", params.get("created_before")),
    )


def _after(raw: str | None) -> tuple[Any, UUID] | None:
    values = decode_cursor(raw, 2)
    if values is None:
        return None
    try:
        at = parse_time("cursor", str(values[0]))
        return (at, UUID(str(values[1])))
    except (BadRequest, ValueError):
        raise BadRequest("cursor is not one this server handed out") from None


async def list_orders(request: Request) -> Response:
    """``GET /api/v1/orders``: newest first, keyset pages (``next_cursor``)."""
    filters = _filters(request)
    limit = limit_of(request)
    after = _after(request.query_params.get("cursor"))
    async with connection(request.app.state.pool) as conn:
        rows = await order_views.list_orders(conn, request.state.tenant, filters, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return page([_summary(request, r) for r in rows], cursor)


def _self(request: Request, order_id: str) -> str:
    return f"{request.state.base_url}{API}/orders/{order_id}"


def _summary(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "reason", "priority", "external_id", "note", "source", "duplicate_of")
    return {
        **{k: row[k] for k in keys},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "studies": [{"study_uid": s} for s in row["studies"]],
        "links": {"self": _self(request, row["id"])},
    }


async def _detail(request: Request, order_id: str) -> JSONAnswer:
    async with connection(request.app.state.pool) as conn:
        row = await order_views.detail(conn, request.state.tenant, order_id)
    if row is None:
        raise NotFound(f"No order {order_id}")
    own = _self(request, row["id"])
    wado = f"{request.state.base_url}/dicomweb/studies/"
    studies = [
        {
            "study_uid": s["study_uid"],
            "patient_id": s["patient_id"],
            "patient_name": s["patient_name"],
            "study_date": s["study_date"],
            "study_time": s["study_time"],
            "modalities": s["modalities"] or [],
            "series": s["series"],
            "instances": s["instances"],
            "study_description": s["study_description"],
            "status": study_status(bool(s["receiving"]), s["state"], s["order_status"]),
            "url": wado + s["study_uid"],
        }
        for s in row["study_rows"]
    ]
    summary = _summary(request, {**row, "studies": []})
    return JSONAnswer(
        {
            **summary,
            "studies": studies,
            "history": row["history"],
            "qc": ordering.qc_of(row["qc"]),
            "attempts": row["attempts"],
            "reports": [
                {"id": r["id"], "created_at": r["created_at"], "links": {"self": f"{own}/reports/{r['id']}"}}
                for r in row["reports"]
            ],
            "links": {
                "self": own,
                "reports": f"{own}/reports",
                "qc": None if row["qc"] is None else own + "#qc",
                "studies": [s["url"] for s in studies],
            },
        }
    )


async def read(request: Request) -> Response:
    """``GET /api/v1/orders/{order}``: the order with its studies, history, QC result and reports."""
    return await _detail(request, request.path_params["order"])


async def cancel(request: Request) -> Response:
    """``POST /api/v1/orders/{order}/cancel``: failed (cancelled); a live claim is withdrawn."""
    order_id = request.path_params["order"]
    await ordering.act(request.app.state.pool, request.state.tenant, order_id, Action.CANCEL, actor(request))
    return await _detail(request, order_id)


async def retry(request: Request) -> Response:
    """``POST /api/v1/orders/{order}/retry``: a failed order goes back to the step that failed."""
    order_id = request.path_params["order"]
    await ordering.act(request.app.state.pool, request.state.tenant, order_id, Action.RETRY, actor(request))
    return await _detail(request, order_id)


async def override_qc(request: Request) -> Response:
    """``POST /api/v1/orders/{order}/qc/override`` ``{"reason"}``: an operator accepts a failed QC."""
    body = await json_body(request)
    unknown = set(body) - {"reason"}
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}")
    reason = _text(body, "reason", MAX_NOTE)
    if reason is None or not reason.strip():
        raise BadRequest("reason is required: why the failed QC is accepted")
    order_id = request.path_params["order"]
    await ordering.act(
        request.app.state.pool, request.state.tenant, order_id, Action.QC_OVERRIDE, actor(request), reason
    )
    return await _detail(request, order_id)
