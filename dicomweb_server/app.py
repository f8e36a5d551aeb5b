"""The composition root: the ASGI application and the lifespan that builds and closes its parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from dicomweb_server import db, logs, metrics
from dicomweb_server.access import auth
from dicomweb_server.access import guard as access
from dicomweb_server.access.ratelimit import Policy, RateLimiter
from dicomweb_server.db.search import PageCache
from dicomweb_server.ingest import sweep
from dicomweb_server.routes import ROUTES
from dicomweb_server.settings import Settings
from dicomweb_server.storage import open_store
from dicomweb_server.web.context import RequestContext
from dicomweb_server.web.errors import EXCEPTION_HANDLERS

log = logging.getLogger(__name__)


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
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.settings = settings
    return app
