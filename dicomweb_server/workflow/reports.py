"""The reports read API (issue #12 §4): an order's reports, one report negotiated by Accept,
and the tenant's reports oldest first for batch download.

A report is one resource with three representations (RFC 9110 §12.5.1 proactive negotiation):
the PDF, the worker's JSON and a CSV (the worker's own, else made from the JSON,
workflow/report_csv.py); ``application/json`` is the default for ``*/*`` or no Accept, anything
else is a 406.  The ``accept`` query parameter works as on DICOMweb routes, so a summary's
links name each format as a plain URL.  Objects stream from the store.  Another tenant's order
or report is a 404, never a 403: its existence is not disclosed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.db import orders as orders_db
from dicomweb_server.db import reports as reports_db
from dicomweb_server.db.pool import connection
from dicomweb_server.errors import BadRequest, NotFound
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.web.media import Offer, negotiate_request
from dicomweb_server.workflow import report_csv
from dicomweb_server.workflow.api import (
    API,
    decode_cursor,
    encode_cursor,
    limit_of,
    page,
    parse_time,
    query,
    rfc3339,
)

PDF, JSON, CSV = "application/pdf", "application/json", "text/csv"
FORMATS = [PDF, JSON, CSV]
# JSON first: it is what */* and a missing Accept get.
OFFERS = [Offer(JSON), Offer(PDF), Offer(CSV)]
_LINKS = {"pdf": PDF, "json": JSON, "csv": CSV}


def summary(report: dict[str, Any], base: str) -> dict[str, Any]:
    """A report as its listings show it: formats, links to each, and its DICOM instances."""
    own = f"{base}{API}/orders/{report['order_id']}/reports/{report['id']}"
    links = {"self": own} | {name: f"{own}?accept={quote(kind, safe='')}" for name, kind in _LINKS.items()}
    return {
        "id": report["id"],
        "order_id": report["order_id"],
        "created_at": rfc3339(report["created_at"]),
        "formats": FORMATS,
        "links": links,
        "instances": [
            {k: i[k] for k in ("study_uid", "series_uid", "sop_uid")} | {"url": base + i["url"]}
            for i in report["instances"]
        ],
    }


async def order_reports(request: Request) -> Response:
    """``GET /api/v1/orders/{order}/reports``: every report of one order, oldest first."""
    query(request, set())
    order_id, tenant = request.path_params["order"], request.state.tenant
    async with connection(request.app.state.pool) as conn:
        if await orders_db.status_of(conn, tenant, order_id) is None:
            raise NotFound(f"No order {order_id}")
        found = await reports_db.of_order(conn, tenant, order_id)
    return page([summary(r, request.state.base_url) for r in found], None)


def _stream(store: ObjectStore, key: str, media_type: str, size: int | None, name: str) -> Response:
    headers = {"content-disposition": f'inline; filename="{name}"'}
    if size is not None:
        headers["content-length"] = str(size)
    return StreamingResponse(store.read(key), headers=headers, media_type=media_type)


async def _read(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


async def order_report(request: Request) -> Response:
    """``GET /api/v1/orders/{order}/reports/{report}``: the PDF, the JSON or the CSV, by Accept."""
    query(request, {"accept"})
    order_id, report_id = request.path_params["order"], request.path_params["report"]
    kind = negotiate_request(request, OFFERS).offer.media_type
    state = request.app.state
    async with connection(state.pool) as conn:
        report = await reports_db.get(conn, request.state.tenant, report_id, order_id)
    if report is None:
        raise NotFound(f"No report {report_id} of order {order_id}")
    store: ObjectStore = state.store
    if kind == PDF:
        return _stream(store, report["pdf_key"], PDF, report["pdf_size"], f"report-{report_id}.pdf")
    if kind == JSON:
        return _stream(store, report["json_key"], JSON, report["json_size"], f"report-{report_id}.json")
    name = f"report-{report_id}.csv"
    if report["csv_key"]:
        return _stream(store, report["csv_key"], CSV + "; charset=utf-8", report["csv_size"], name)
    text = report_csv.from_json(orjson.loads(await _read(store, report["json_key"])))
    headers = {"content-disposition": f'inline; filename="{name}"'}
    return Response(text.encode(), media_type=CSV + "; charset=utf-8", headers=headers)


def _after(raw: str | None) -> tuple[datetime, str] | None:
    """The listing's cursor: a time and a report id, as handed out (400 otherwise)."""
    cursor = decode_cursor(raw, 2)
    if cursor is None:
        return None
    at, report_id = cursor
    try:
        when = parse_time("cursor", at) if isinstance(at, str) else None
        if when is not None and isinstance(report_id, str):
            return (when, str(UUID(report_id)))
    except (BadRequest, ValueError):
        pass
    raise BadRequest("cursor is not one this server handed out")


async def all_reports(request: Request) -> Response:
    """``GET /api/v1/reports?created_after=&cursor=&limit=``: the tenant's reports, oldest
    first, keyset-paged on (created_at, id) for batch download."""
    params = query(request, {"created_after", "cursor", "limit"})
    limit = limit_of(request)
    created_after = parse_time("created_after", params.get("created_after"))
    after = _after(params.get("cursor"))
    async with connection(request.app.state.pool) as conn:
        found = await reports_db.page(conn, request.state.tenant, after, created_after, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    next_cursor = encode_cursor(found[-1]["created_at"], found[-1]["id"]) if more else None
    return page([summary(r, request.state.base_url) for r in found], next_cursor)
