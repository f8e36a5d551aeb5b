"""Prometheus metrics (prometheus-client), the only module that imports it.

Served on a listener of their own, ``DICOMWEB_METRICS_PORT`` on ``DICOMWEB_METRICS_HOST``
(127.0.0.1 by default), never on the API port: a scraper needs no token, and the metrics are
not reachable from wherever the API is.  Off when the port is unset or 0.

With more than one worker process (workers.py), every worker writes its values to files in
one folder (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), which
``prepare`` creates before the workers start; the primary process serves the sum over the
workers.  Gauges there are ``livesum``: a worker that stopped is left out (its files are
removed by the next worker that starts, or by itself when it stops cleanly).

Other modules call one function each, in one line: ``request`` (web.context.RequestContext),
``stow_result`` (stow.py), ``audit_written`` / ``audit_dropped`` (audit.AuditTrail);
``TimedStore`` wraps the object store and ``sample`` reads the pool and connection gauges.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import psutil
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_asgi_app,
    multiprocess,
    start_http_server,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "dicomweb_http_requests",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "dicomweb_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
IN_PROGRESS = Gauge(
    "dicomweb_http_requests_in_progress", "Requests being served", multiprocess_mode="livesum"
)
CONNECTIONS = Gauge(
    "dicomweb_open_connections",
    "Open client connections (TCP, ESTABLISHED) on the API port, sampled every few seconds",
    multiprocess_mode="livesum",
)
STOW_INSTANCES = Counter("dicomweb_stow_instances_stored", "Instances stored by STOW-RS")
STOW_BYTES = Counter("dicomweb_stow_stored_bytes", "Bytes of the instances stored by STOW-RS")
STOW_FAILURES = Counter(
    "dicomweb_stow_instance_failures",
    "Instances STOW-RS did not store, by PS3.18 FailureReason (hex, e.g. 0xC000)",
    ["reason"],
)
AUDIT_WRITTEN = Counter("dicomweb_audit_rows_written", "Audit rows appended to the audit table")
AUDIT_DROPPED = Counter("dicomweb_audit_rows_dropped", "Audit rows that could not be written")
AUDIT_QUEUED = Gauge(
    "dicomweb_audit_rows_queued", "Audit rows waiting to be written", multiprocess_mode="livesum"
)
POOL_SIZE = Gauge(
    "dicomweb_db_pool_connections", "Database pool connections open", multiprocess_mode="livesum"
)
POOL_IDLE = Gauge(
    "dicomweb_db_pool_idle_connections", "Database pool connections idle", multiprocess_mode="livesum"
)
POOL_MAX = Gauge("dicomweb_db_pool_max_connections", "Database pool size limit", multiprocess_mode="livesum")
STORAGE_LATENCY = Histogram(
    "dicomweb_storage_operation_duration_seconds",
    "Object storage operations: commit (durable write), read (a whole range streamed), delete, ping",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)


# -- call sites -------------------------------------------------------------------------------


def request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route, str(status)).observe(seconds)


def stow_result(stored: int, stored_bytes: int, failure_reasons: Iterable[int]) -> None:
    STOW_INSTANCES.inc(stored)
    STOW_BYTES.inc(stored_bytes)
    for reason in failure_reasons:
        STOW_FAILURES.labels(f"0x{reason:04X}").inc()


def audit_written(rows: int) -> None:
    AUDIT_WRITTEN.inc(rows)


def audit_dropped(rows: int) -> None:
    AUDIT_DROPPED.inc(rows)


class TimedStore:
    """The object store with each operation's latency recorded; everything else passes through."""

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def writer(self, key: str) -> Any:
        return _TimedWriter(self._store.writer(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Records the time spent waiting for the store's chunks only: a retrieve reads just ahead
        of the socket, so timing the whole stream would measure the client's download."""
        spent, outcome = 0.0, "error"
        try:
            async with contextlib.aclosing(self._store.read(key, start, end)) as chunks:
                while True:
                    began = time.perf_counter()
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    finally:
                        spent += time.perf_counter() - began
                    yield chunk
            outcome = "ok"
        except GeneratorExit:
            outcome = "ok"  # the reader closed it: it had what it wanted, or its client went away
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            STORAGE_LATENCY.labels("read", outcome).observe(spent)

    async def delete(self, key: str) -> None:
        with _timed("delete"):
            await self._store.delete(key)

    async def ping(self) -> None:
        with _timed("ping"):
            await self._store.ping()


class _TimedWriter:
    def __init__(self, writer: Any):
        self._writer = writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    async def write(self, data: bytes | memoryview) -> None:
        await self._writer.write(data)

    async def commit(self) -> bytes:
        with _timed("commit"):
            digest: bytes = await self._writer.commit()
            return digest

    async def abort(self) -> None:
        await self._writer.abort()


@contextlib.contextmanager
def _timed(operation: str) -> Any:
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except asyncio.CancelledError:
        outcome = "cancelled"  # not a storage error
        raise
    finally:
        STORAGE_LATENCY.labels(operation, outcome).observe(time.perf_counter() - started)


# -- sampled gauges ---------------------------------------------------------------------------

_PORTS: set[int] = set()


def api_port(port: int | None) -> None:
    """The port requests arrive on (from the ASGI scope): open connections are counted on it."""
    if port is not None:
        _PORTS.add(port)


def _established() -> int:
    ports = set(_PORTS)
    if not ports:
        return 0
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port in ports
    )


class PoolSizes(Protocol):
    """What the gauges read of the database pool (db.pool.Pool, which this leaf cannot import)."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


async def sample(pool: PoolSizes, audit: Any) -> None:
    """Pool, audit queue and connection gauges of this process (a job, every few seconds)."""
    POOL_SIZE.set(pool.get_size())
    POOL_IDLE.set(pool.get_idle_size())
    POOL_MAX.set(pool.get_max_size())
    AUDIT_QUEUED.set(len(getattr(audit, "queue", ())))
    with contextlib.suppress(psutil.Error, OSError):
        CONNECTIONS.set(await asyncio.to_thread(_established))


# -- exposition -------------------------------------------------------------------------------


def registry() -> CollectorRegistry:
    """What a scrape reads: the sum over the workers' files in multiprocess mode, else this process."""
    if os.environ.get(MULTIPROC_ENV):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return REGISTRY


def asgi_app() -> Callable[..., Any]:
    """The exposition as an ASGI app (what the listener serves, for tests and embedding)."""
    app: Callable[..., Any] = make_asgi_app(registry())
    return app


def prepare(port: int, host: str, workers: int) -> None:
    """Before the server starts (cli serve): multiprocess mode for workers, then the listener.

    Call before any worker process starts: they read ``PROMETHEUS_MULTIPROC_DIR`` when they
    import prometheus-client.
    """
    if port and workers > 1 and not os.environ.get(MULTIPROC_ENV):
        folder = tempfile.mkdtemp(prefix="dicomweb-metrics-")
        os.environ[MULTIPROC_ENV] = folder
        atexit.register(shutil.rmtree, folder, True)
    if port:
        try:
            start_http_server(port, addr=host, registry=registry())
        except OSError as exc:
            raise SystemExit(
                f"DICOMWEB_METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror}"
            ) from None


def worker_started() -> None:
    """In multiprocess mode, forget the gauges of workers that are gone (their pid is not running)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match and not psutil.pid_exists(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), folder)  # type: ignore[no-untyped-call]


def worker_stopped() -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
