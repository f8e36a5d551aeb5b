"""THE route table: every HTTP route, its handler and (for DICOMweb) the transaction it serves.

Grouped by context: the open service pages, health, the token endpoint and its discovery
documents, the audit trail, then the DICOMweb resources of PS3.18 (Table 10.6.1-4 for which
IE levels each search resource matches on).  Every DICOMweb route is guarded (bearer token,
the transaction's scope, rate limits, the token's tenant) and has its path UIDs checked.
One Starlette route per path, so that a 405 lists every method the path allows.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dicomweb_server.access import guard as access
from dicomweb_server.db import pool as db_pool
from dicomweb_server.dicom import query
from dicomweb_server.dicom.query import Resource
from dicomweb_server.dicom.resources import ROOT, Level, collection, is_valid_uid, template
from dicomweb_server.dicomweb import capabilities, delete, qido, stow, wado
from dicomweb_server.errors import BadRequest, DicomWebError, StorageError
from dicomweb_server.web import service
from dicomweb_server.web.media import Offer, negotiate_request
from dicomweb_server.workflow import feed, orders, reports, studies, worker
from dicomweb_server.workflow.api import API as V1

STUDY, SERIES, INSTANCE = (template(level) for level in Level)


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the index and the object store are reachable."""
    state = request.app.state
    try:
        await db_pool.ping(state.pool)
    except (DicomWebError, StorageError):
        return JSONResponse({"status": "unavailable", "reason": "the index database is unreachable"}, 503)
    try:
        await state.store.ping()
    except (DicomWebError, StorageError):
        return JSONResponse({"status": "unavailable", "reason": "the object store is unreachable"}, 503)
    return JSONResponse({"status": "ready"})


def _search(resource: Resource) -> partial[Any]:
    return partial(qido.search, resource=resource)


RESOURCES = (STUDY, SERIES, INSTANCE)
# PS3.18 Table 10.6.1-4: which IE levels each search resource matches on.
# Each entry: path, methods, handler, and the transaction it serves (for capabilities.py).
API: list[tuple[str, list[str], Any, str]] = [
    (collection(Level.STUDY), ["POST"], stow.store_instances, "store"),
    (STUDY, ["POST"], stow.store_instances, "store"),
    (collection(Level.STUDY), ["GET"], _search(query.STUDIES), "search-studies"),
    (collection(Level.SERIES), ["GET"], _search(query.SERIES), "search-series"),
    (
        collection(Level.INSTANCE),
        ["GET"],
        _search(query.INSTANCES),
        "search-instances",
    ),
    (STUDY + "/series", ["GET"], _search(query.STUDY_SERIES), "search-series"),
    (
        STUDY + "/instances",
        ["GET"],
        _search(query.STUDY_INSTANCES),
        "search-instances",
    ),
    (SERIES + "/instances", ["GET"], _search(query.SERIES_INSTANCES), "search-instances"),
    *[(path, ["GET"], wado.retrieve, "retrieve") for path in RESOURCES],
    *[(path + "/metadata", ["GET"], wado.metadata, "metadata") for path in RESOURCES],
    *[(path + "/rendered", ["GET"], wado.rendered, "rendered") for path in RESOURCES],
    *[
        (path + "/thumbnail", ["GET"], partial(wado.rendered, thumbnail=True), "thumbnail")
        for path in RESOURCES
    ],
    (INSTANCE + "/frames/{frames}", ["GET"], wado.retrieve_frames, "frames"),
    (INSTANCE + "/frames/{frames}/rendered", ["GET"], wado.rendered, "rendered"),
    (INSTANCE + "/frames/{frames}/thumbnail", ["GET"], partial(wado.rendered, thumbnail=True), "thumbnail"),
    (INSTANCE + "/bulkdata/{path:path}", ["GET"], wado.retrieve_bulkdata, "bulkdata"),
    *[(path, ["DELETE"], delete.delete, "delete") for path in RESOURCES],
]


# The workflow's /api/v1 routes (README, "Orders"): path, methods, handler, transaction (its scope).
WORKFLOW: list[tuple[str, list[str], Any, str]] = [
    (V1 + "/studies/{study}/commit", ["POST"], studies.commit, "orders-write"),
    (V1 + "/studies/{study}/status", ["GET"], studies.status, "orders-read"),
    (V1 + "/events", ["GET"], feed.list_events, "feed"),
    (V1 + "/orders/{order}/reports", ["GET"], reports.order_reports, "orders-read"),
    (V1 + "/orders/{order}/reports/{report}", ["GET"], reports.order_report, "orders-read"),
    (V1 + "/reports", ["GET"], reports.all_reports, "orders-read"),
    (V1 + "/orders", ["POST"], orders.create, "orders-write"),
    (V1 + "/orders", ["GET"], orders.list_orders, "orders-read"),
    (V1 + "/orders/{order}", ["GET"], orders.read, "orders-read"),
    (V1 + "/orders/{order}/cancel", ["POST"], orders.cancel, "orders-write"),
    (V1 + "/orders/{order}/retry", ["POST"], orders.retry, "orders-write"),
    (V1 + "/orders/{order}/qc/override", ["POST"], orders.override_qc, "orders-write"),
    (V1 + "/jobs/claim", ["POST"], worker.claim, "analysis"),
    (V1 + "/jobs/{job}/heartbeat", ["POST"], worker.heartbeat, "analysis"),
    (V1 + "/jobs/{job}/complete", ["POST"], worker.complete, "analysis"),
    (V1 + "/jobs/{job}/fail", ["POST"], worker.fail, "analysis"),
]


async def retrieve_capabilities(request: Request) -> Response:
    """OPTIONS /dicomweb: PS3.18 §8.9 Retrieve Capabilities, WADL by default or JSON."""
    routes = [(path, method, transaction) for path, methods, _, transaction in API for method in methods]
    routes.append((ROOT, "OPTIONS", "capabilities"))
    base = request.state.base_url
    choice = negotiate_request(
        request, [Offer(capabilities.WADL), Offer("application/json"), Offer("application/xml")]
    )
    if choice.offer.media_type == "application/json":
        return JSONResponse(capabilities.as_json(routes, ROOT, base))
    return Response(capabilities.wadl(routes, ROOT, base), media_type=choice.offer.media_type)


Handler = access.Handler
_UID_PARAMS = (
    ("study", "Study Instance UID"),
    ("series", "Series Instance UID"),
    ("instance", "SOP Instance UID"),
)


def uids_checked(handler: Handler) -> Handler:
    """400 for a path UID that is not a UID (PS3.5 §9.1), before the handler sees it.

    Runs inside the guard: an unauthenticated request gets its 401 first.
    """

    async def endpoint(request: Request) -> Response:
        for name, what in _UID_PARAMS:
            value = request.path_params.get(name)
            if value is not None and not is_valid_uid(value):
                shown = value if len(value) <= 80 else value[:80] + "..."
                raise BadRequest(
                    f"{what} {shown!r} in the path is not a valid UID "
                    "(PS3.5 §9.1: digits and dots, no leading zeros, at most 64 characters)"
                )
        return await handler(request)

    return endpoint


def dispatch(handlers: dict[str, Handler]) -> Handler:
    """One route per path, so that a 405 lists every method the path allows in ``Allow``."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


def _routes() -> list[BaseRoute]:
    # Open: the service document, the API description, health, capabilities, the token
    # endpoint and its discovery documents.  Everything else is guarded: bearer token, the
    # transaction's scope, rate limits, the token's tenant.
    table: dict[str, dict[str, Handler]] = {
        "/": {"GET": service.home},
        "/openapi.json": {"GET": service.openapi},
        "/docs": {"GET": service.docs},
        "/healthz": {"GET": healthz},
        "/readyz": {"GET": readyz},
        ROOT: {"OPTIONS": retrieve_capabilities, "GET": service.home},
        "/oauth/token": {"POST": access.token},
        "/.well-known/jwks.json": {"GET": access.jwks},
        "/.well-known/oauth-authorization-server": {"GET": access.metadata},
        "/admin/audit": {"GET": access.guard(access.read_audit, "audit")},
    }
    for path, methods, handler, transaction in (*API, *WORKFLOW):
        for method in methods:
            table.setdefault(path, {})[method] = access.guard(uids_checked(handler), transaction)
    routes: list[BaseRoute] = [
        Route(
            path,
            handlers[next(iter(handlers))] if len(handlers) == 1 else dispatch(handlers),
            methods=list(handlers),
        )
        for path, handlers in table.items()
    ]
    routes.append(Mount(service.DOCS_STATIC, app=service.static_files(), name="docs-static"))
    return routes


ROUTES = _routes()
