"""The ASGI application: one route table, request context, one error mapping, the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server import db, logs, metrics
from dicomweb_server.access import auth
from dicomweb_server.access import guard as access
from dicomweb_server.access.audit import REQUEST_ID
from dicomweb_server.access.ratelimit import Policy, RateLimiter
from dicomweb_server.db.search import PageCache
from dicomweb_server.dicom.query import Resource
from dicomweb_server.dicom.resources import ROOT, Level, collection, is_valid_uid, template
from dicomweb_server.dicomweb import capabilities, delete, qido, stow, wado
from dicomweb_server.errors import (
    CLIENT_CLOSED,
    CONNECTION_STATUS,
    BadRequest,
    DicomWebError,
    ServiceUnavailable,
    StorageError,
)
from dicomweb_server.ingest import sweep
from dicomweb_server.settings import Settings
from dicomweb_server.storage import open_store
from dicomweb_server.web import service
from dicomweb_server.web.media import Offer, negotiate_request

log = logging.getLogger("dicomweb_server.access.guard")

STUDY, SERIES, INSTANCE = (template(level) for level in Level)


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the index and the object store are reachable."""
    state = request.app.state
    try:
        await db.ping(state.pool)
    except (DicomWebError, StorageError):
        return JSONResponse({"status": "unavailable", "reason": "the index database is unreachable"}, 503)
    try:
        await state.store.ping()
    except (DicomWebError, StorageError):
        return JSONResponse({"status": "unavailable", "reason": "the object store is unreachable"}, 503)
    return JSONResponse({"status": "ready"})


def _search(level: Level, *accepts: Level) -> partial[Any]:
    return partial(qido.search, resource=Resource(level, frozenset(accepts)))


RESOURCES = (STUDY, SERIES, INSTANCE)
# PS3.18 Table 10.6.1-4: which IE levels each search resource matches on.
# Each entry: path, methods, handler, and the transaction it serves (for capabilities.py).
API: list[tuple[str, list[str], Any, str]] = [
    (collection(Level.STUDY), ["POST"], stow.store_instances, "store"),
    (STUDY, ["POST"], stow.store_instances, "store"),
    (collection(Level.STUDY), ["GET"], _search(Level.STUDY, Level.STUDY), "search-studies"),
    (collection(Level.SERIES), ["GET"], _search(Level.SERIES, Level.STUDY, Level.SERIES), "search-series"),
    (
        collection(Level.INSTANCE),
        ["GET"],
        _search(Level.INSTANCE, Level.STUDY, Level.SERIES, Level.INSTANCE),
        "search-instances",
    ),
    (STUDY + "/series", ["GET"], _search(Level.SERIES, Level.SERIES), "search-series"),
    (
        STUDY + "/instances",
        ["GET"],
        _search(Level.INSTANCE, Level.SERIES, Level.INSTANCE),
        "search-instances",
    ),
    (SERIES + "/instances", ["GET"], _search(Level.INSTANCE, Level.INSTANCE), "search-instances"),
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
    for path, methods, handler, transaction in API:
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


async def on_error(request: Request, exc: Exception) -> Response:
    """The single mapping from request-level errors to responses."""
    assert isinstance(exc, DicomWebError)
    headers = dict(exc.headers)
    if exc.status == 413 or (exc.status == 429 and request.method == "POST"):
        headers["Connection"] = "close"  # the rest of the body is not read
    return JSONResponse({"status": exc.status, "message": exc.message}, exc.status, headers)


async def on_storage_error(request: Request, exc: Exception) -> Response:
    return await on_error(request, ServiceUnavailable("object storage unavailable"))


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (method not allowed) as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if "Allow" in headers:  # Starlette joins a set: give it a stable order
        headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
    if exc.status_code == 404:
        path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
        message = f"No resource at {path!r}; the routes are listed at /openapi.json"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
    else:
        message = str(exc.detail)
    return JSONResponse({"status": exc.status_code, "message": message}, exc.status_code, headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback by Starlette; the client gets JSON naming only its request id."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    return JSONResponse({"status": 500, "message": f"internal error (request id {request_id})"}, 500)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set; `dicomweb-server serve` starts an embedded PostgreSQL")
    if settings.signing_keys is None or not settings.signing_keys.exists():
        raise RuntimeError("DICOMWEB_SIGNING_KEYS must name a key file (`dicomweb-server keys create`)")
    issuer = settings.issuer or settings.public_base_url
    if not issuer:
        raise RuntimeError("DICOMWEB_ISSUER (or DICOMWEB_PUBLIC_BASE_URL) must be set")
    app.state.pool = await db.create_pool(settings.database_url, settings.db_pool_size)
    app.state.store = metrics.TimedStore(await open_store(settings.storage_path, settings.s3))
    app.state.page_cache = PageCache()
    app.state.ingested = asyncio.Event()
    keys = auth.SigningKeys.load(settings.signing_keys)
    tokens = auth.TokenSettings(issuer, issuer + "/dicomweb", settings.token_lifetime)
    app.state.access = access.Access(
        keys=keys,
        tokens=tokens,
        verifier=auth.Verifier(keys, tokens, _external_issuer(settings, tokens)),
        limiter=await RateLimiter.open(settings.rate_limit_storage),
        default_policy=Policy(settings.rate_requests, settings.rate_bytes, settings.rate_window_seconds),
        pool=app.state.pool,
    )
    app.state.audit = access.AuditTrail(app.state.pool)
    metrics.worker_started()
    tasks = [
        asyncio.create_task(_fresh_statistics(app)),
        asyncio.create_task(app.state.audit.run()),
        asyncio.create_task(metrics.sample_forever(app.state.pool, app.state.audit)),
    ]
    if settings.gc_interval_seconds > 0:
        tasks.append(asyncio.create_task(_sweep_forever(app)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app.state.audit.close()
        await app.state.access.limiter.close()
        await app.state.store.close()
        await app.state.pool.close()
        metrics.worker_stopped()


def _external_issuer(settings: Settings, tokens: auth.TokenSettings) -> auth.ExternalIssuer | None:
    if not settings.external_issuer:
        return None
    if not settings.external_jwks:
        raise RuntimeError("DICOMWEB_EXTERNAL_ISSUER needs DICOMWEB_EXTERNAL_JWKS (a JWKS file or URL)")
    if settings.external_issuer == tokens.issuer:
        raise RuntimeError("DICOMWEB_EXTERNAL_ISSUER must differ from our own issuer")
    audience = settings.external_audience or tokens.audience
    return auth.ExternalIssuer.load(
        settings.external_issuer, audience, settings.external_jwks, settings.external_tenant_claim
    )


async def _fresh_statistics(app: Starlette) -> None:
    """After ingest, keep planner statistics current (checked at most once a second, in <1 ms)."""
    while True:
        await asyncio.sleep(1)  # a flag, not wait_for(): Python 3.11's wait_for can swallow a cancel
        if not app.state.ingested.is_set():
            continue
        app.state.ingested.clear()
        try:
            await db.analyze_if_stale(app.state.pool)
        except Exception:
            log.exception("statistics refresh failed", extra={"event": "analyze_failed"})


async def _sweep_forever(app: Starlette) -> None:
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(settings.gc_interval_seconds)
        try:
            await sweep.sweep(app.state.pool, app.state.store, settings.gc_grace_seconds)
        except Exception:
            log.exception("sweep failed", extra={"event": "sweep_failed"})


def base_url(scope: Scope, public: str | None) -> str:
    """The URL clients reach this server at, for the URLs it writes into responses.

    ``DICOMWEB_PUBLIC_BASE_URL`` when set (behind a proxy, set it); otherwise the Host
    header.  Some clients (dicomweb-client) send Host without the port: when Host names
    our own listening address, the socket's port is added so that the URLs resolve.
    """
    if public:
        return public
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1") or "localhost"
    server = scope.get("server")
    scheme = scope.get("scheme", "http")
    if server and ":" not in host and host == server[0] and server[1] not in (None, _DEFAULT_PORT[scheme]):
        host = f"{host}:{server[1]}"
    return f"{scheme}://{host}{scope.get('root_path', '')}".rstrip("/")


_DEFAULT_PORT = {"http": 80, "https": 443}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class RequestContext:
    """Request id, tenant, base URL and one access-log line per request (route template, not the path)."""

    def __init__(self, app: ASGIApp, public_base_url: str | None = None):
        self.app = app
        self.public_base_url = public_base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, base_url=base_url(scope, self.public_base_url))
        started = time.perf_counter()
        app = self.app
        if scope.get("http_version") == "1.1" and b"host" not in headers:
            # RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (and we build URLs from it).
            app = JSONResponse({"status": 400, "message": "An HTTP/1.1 request needs a Host header"}, 400)
        sent: dict[str, Any] = {"status": 500, "bytes": 0, "started": False, "complete": False}
        metrics.api_port((scope.get("server") or (None, None))[1])
        metrics.IN_PROGRESS.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
                sent["complete"] = not message.get("more_body", False)
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client went away, or the connection layer cut a stalled body (it answered 408
            # itself): nobody is left to answer, and this is no server error to report.
            if sent["started"]:
                raise  # a response was under way: it is logged as aborted below
            sent["status"] = state.get(CONNECTION_STATUS, CLIENT_CLOSED)
            sent["complete"] = True
        finally:
            # The route's template ("/dicomweb/studies/{study}"): which transaction, never which UIDs.
            route = getattr(scope.get("route"), "path", None)
            elapsed = time.perf_counter() - started
            metrics.IN_PROGRESS.dec()
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded labels
            metrics.request(method, route or "none", sent["status"], elapsed)
            # A response whose status line went out but whose body never ended was aborted (the
            # connection dropped, by the client or by us): logged as an error, never as a plain 200.
            aborted = not sent["complete"]
            log.log(
                logging.ERROR if aborted else logging.INFO,
                "request aborted" if aborted else "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route or "none",
                    "client_id": state.get("client_id"),
                    "status": sent["status"],
                    "bytes_out": sent["bytes"],
                    "ms": round(elapsed * 1000, 2),
                    **({"aborted": True} if aborted else {}),
                },
            )
            trail = getattr(getattr(scope.get("app"), "state", None), "audit", None)
            if trail is not None:
                study = scope.get("path_params", {}).get("study") or state.get("study_uid")
                trail.record(state, sent["status"], request_id, study)  # audit.safe_uid: digest unless a UID


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    logs.silence_phi_sources()
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(RequestContext, public_base_url=settings.public_base_url),
            # Only configured origins; "*" is never implied (a viewer is served from a known origin).
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=[
                    "Accept",
                    "Authorization",
                    "Content-Type",
                    "If-None-Match",
                    "Range",
                    "X-Request-Id",
                ],
                expose_headers=["Content-Location", "Content-Range", "ETag", "Warning", "X-Request-Id"],
                max_age=600,
            ),
        ],
        lifespan=lifespan,
        exception_handlers={
            DicomWebError: on_error,
            StorageError: on_storage_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.state.settings = settings
    return app
