"""The composition root: the ASGI application and the lifespan that builds and closes its parts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from dicomweb_server import events, logs, metrics
from dicomweb_server.access import auth
from dicomweb_server.access import guard as access
from dicomweb_server.access import jobs as access_jobs
from dicomweb_server.access.audit import AuditTrail
from dicomweb_server.access.ratelimit import Policy, RateLimiter
from dicomweb_server.db import pool as db_pool
from dicomweb_server.db.search import PageCache
from dicomweb_server.dicom.resources import ROOT
from dicomweb_server.ingest import jobs as ingest_jobs
from dicomweb_server.ingest.jobs import StatisticsKeeper
from dicomweb_server.jobs.runner import Job, Parts, Processor, Runner, bind
from dicomweb_server.routes import ROUTES
from dicomweb_server.settings import AccessSettings, Settings
from dicomweb_server.storage import open_store
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.web.context import RequestContext
from dicomweb_server.web.errors import EXCEPTION_HANDLERS
from dicomweb_server.workflow import jobs as workflow_jobs


@dataclass(frozen=True)
class Resources:
    """The index's pool and the object store: what every command and the server work on."""

    pool: db_pool.Pool
    store: ObjectStore


@contextlib.asynccontextmanager
async def resources(
    settings: Settings, url: str | None = None, pool_size: int | None = None
) -> AsyncIterator[Resources]:
    """The one place the pool and the store are built and closed (the lifespan, ``cli gc``).

    ``url`` overrides ``settings.database.url`` (the CLI's embedded PostgreSQL); the store's
    operations are timed for the metrics (metrics.TimedStore).
    """
    url = url or settings.database.url
    if not url:
        raise RuntimeError("DATABASE_URL is not set; `dicomweb-server serve` starts an embedded PostgreSQL")
    async with contextlib.AsyncExitStack() as stack:
        pool = await db_pool.create_pool(url, pool_size or settings.database.pool_size)
        stack.push_async_callback(pool.close)
        store: ObjectStore = metrics.TimedStore(await open_store(settings.storage.path, settings.storage.s3))
        stack.push_async_callback(store.close)
        yield Resources(pool, store)


# Every context's background work, merged as the routes are (DESIGN.md, jobs/).
JOBS: dict[str, Processor] = {
    **ingest_jobs.JOBS,
    **access_jobs.JOBS,
    **workflow_jobs.JOBS,
    "metrics.sample": lambda parts: Job(
        partial(metrics.sample, parts.pool, parts.get(AuditTrail)), every=METRICS_EVERY, at_start=True
    ),
}
METRICS_EVERY = 5.0  # seconds between samples of the pool, audit queue and connection gauges


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Build every long-lived part in order, hand them to the handlers (``app.state``) and the
    job runner, and close them in the reverse order (an ``AsyncExitStack``)."""
    settings: Settings = app.state.settings
    access_settings = settings.access
    if access_settings.signing_keys is None or not access_settings.signing_keys.exists():
        raise RuntimeError("DICOMWEB_SIGNING_KEYS must name a key file (`dicomweb-server keys create`)")
    issuer = access_settings.issuer or settings.http.public_base_url
    if not issuer:
        raise RuntimeError("DICOMWEB_ISSUER (or DICOMWEB_PUBLIC_BASE_URL) must be set")
    async with contextlib.AsyncExitStack() as stack:
        metrics.worker_started()
        stack.callback(metrics.worker_stopped)
        parts = await stack.enter_async_context(resources(settings))
        keys = auth.SigningKeys.load(access_settings.signing_keys)
        tokens = auth.TokenSettings(issuer, issuer + ROOT, access_settings.token_lifetime)
        limiter = await RateLimiter.open(access_settings.rate_limit_storage)
        stack.push_async_callback(limiter.close)
        trail = AuditTrail(parts.pool)
        stack.push_async_callback(trail.close)  # after the runner stops: flushes what is queued
        keeper = StatisticsKeeper(parts.pool)
        state = app.state
        state.pool, state.store, state.audit = parts.pool, parts.store, trail
        state.page_cache = PageCache()
        state.access = access.Access(
            keys=keys,
            tokens=tokens,
            verifier=auth.Verifier(keys, tokens, _external_issuer(access_settings, tokens)),
            limiter=limiter,
            default_policy=Policy(
                access_settings.rate_requests, access_settings.rate_bytes, access_settings.rate_window_seconds
            ),
            pool=parts.pool,
        )
        # The analysis claims' job tokens, minted for the workflow without it importing access.
        state.mint_job_token = partial(auth.mint_job_token, keys, tokens)
        state.feed_waker = await stack.enter_async_context(events.Waker(parts.pool))
        jobs = bind(JOBS, Parts(settings, parts.pool, parts.store, (trail, keeper)))
        await stack.enter_async_context(Runner(jobs))
        yield


def _external_issuer(settings: AccessSettings, tokens: auth.TokenSettings) -> auth.ExternalIssuer | None:
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


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    logs.silence_phi_sources()
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(RequestContext, public_base_url=settings.http.public_base_url),
            # Only configured origins; "*" is never implied (a viewer is served from a known origin).
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.http.cors_origins),
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
