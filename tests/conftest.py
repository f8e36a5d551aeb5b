"""Shared fixtures: a private PostgreSQL, a real S3 server, the app over ASGI and over a real socket."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dicomweb_server.access import auth
from dicomweb_server.app import create_app
from dicomweb_server.cli import migrate
from dicomweb_server.settings import AccessSettings, DatabaseSettings, S3Settings, Settings, StorageSettings

ROOT = Path(__file__).resolve().parent.parent
ASGI_ISSUER = "http://testserver"
# One signing key set for the whole run (real ES256 keys; generating one costs ~1 ms).
KEYS_FILE = Path(__import__("tempfile").mkdtemp(prefix="dicomweb-keys-")) / "signing-keys.json"
KEYS = auth.SigningKeys.generate(KEYS_FILE)
TENANT = "default"
CLIENT = "test-client"
OTHER_TENANT = "other"
OTHER_CLIENT = "other-client"
ANALYSIS_CLIENT = "test-analysis"  # the analysis service's client (tenant auth.ANALYSIS_TENANT)


def token_for(
    issuer: str = ASGI_ISSUER,
    client_id: str = CLIENT,
    tenant: str = TENANT,
    scopes: tuple[str, ...] = auth.SCOPES,
) -> str:
    """A real access token, signed by the run's keys, as the token endpoint would issue it."""
    return auth.issue(KEYS, auth.TokenSettings(issuer, issuer + "/dicomweb"), client_id, tenant, scopes)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ensure_clients(pool: asyncpg.Pool) -> None:
    """The test tenants and their clients (every scope); secrets are not needed for minted tokens."""
    from dicomweb_server.db import access as index
    from dicomweb_server.db.pool import connection

    async with connection(pool) as conn:
        for tenant, client in ((TENANT, CLIENT), (OTHER_TENANT, OTHER_CLIENT)):
            await index.create_tenant(conn, tenant, tenant)
            if await index.find_client(conn, client) is None:
                hashed = auth.hash_secret("unused")
                await index.create_client(conn, client, tenant, client, auth.SCOPES, hashed)
        await index.create_tenant(conn, auth.ANALYSIS_TENANT, "analysis")
        if await index.find_client(conn, ANALYSIS_CLIENT) is None:
            hashed = auth.hash_secret("unused")
            await index.create_client(
                conn, ANALYSIS_CLIENT, auth.ANALYSIS_TENANT, ANALYSIS_CLIENT, [auth.ANALYSIS_SCOPE], hashed
            )


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_DATABASE_URL if given (a fresh database is created in it), else an embedded PostgreSQL."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        name = f"dicomweb_test_{uuid.uuid4().hex[:8]}"
        admin_sql(given, f"CREATE DATABASE {name}")
        url = given.rsplit("/", 1)[0] + "/" + name
        migrate(url)
        yield url
        admin_sql(given, f"DROP DATABASE {name} WITH (FORCE)")
        return
    from dicomweb_server.db.embedded import start_postgres

    url, server = start_postgres(tmp_path_factory.mktemp("pg"))
    migrate(url)
    yield url
    server.cleanup()


def admin_sql(url: str, sql: str) -> None:
    import asyncio

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on an empty index."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    await pool.execute(
        "TRUNCATE study, series, instance, event, event_retention, arrival, orders, order_study, "
        "order_history, analysis_job, report, pgqueuer RESTART IDENTITY CASCADE"
    )
    await ensure_clients(pool)
    yield pool
    await pool.close()


def make_settings(database_url: str, objects: Path, **sections: dict[str, Any]) -> Settings:
    """The tests' settings: this database, objects under ``objects``, no in-process sweep, the
    test signing keys.  ``sections`` change fields of one section each, as they read at the
    call site: ``make_settings(url, path, ingest=dict(max_parts=2))``."""
    base = Settings(
        data_dir=objects.parent,
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(path=objects, gc_interval_seconds=0),
        access=AccessSettings(signing_keys=KEYS_FILE, issuer=ASGI_ISSUER),
    )
    changed = {name: dataclasses.replace(getattr(base, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(base, **changed)


@dataclass
class App:
    client: httpx.AsyncClient
    settings: Settings
    state: object


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[App]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await ensure_clients(app.state.pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=bearer(token_for())
        ) as client:
            yield App(client, settings, app.state)


@pytest.fixture
async def app(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    """The application over ASGI, with local storage in a temp folder and an empty index."""
    async with running_app(make_settings(database_url, tmp_path / "objects")) as a:
        yield a


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A real SeaweedFS S3 server on 127.0.0.1 for the whole session."""
    from tests.support.s3server import run_seaweedfs

    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as ep:
        yield S3Settings(
            ep.url, ep.bucket, ep.access_key, ep.secret_key, ep.region, part_size=5 * 1024 * 1024
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real `dicomweb-server serve` process on a loopback socket."""

    url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        """A bearer token of the default test client for this server."""
        return bearer(token_for(self.url))

    def stop(self, sig: str = "term") -> None:
        if self.process.poll() is None:
            (self.process.kill if sig == "kill" else self.process.terminate)()
            self.process.wait(timeout=20)


_STARTED: list[Server] = []


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_servers() -> Iterator[None]:
    """A test that fails before stopping its server must not leave the process running."""
    yield
    for server in _STARTED:
        with contextlib.suppress(Exception):
            server.stop("kill")


def start_server(
    database_url: str, data: Path, workers: int = 1, *, port: int | None = None, **env: str
) -> Server:
    """``dicomweb-server serve`` on ``port`` (default: a free one; the same port again restarts
    a server at its URL, so its clients and its tokens' issuer stay valid)."""
    port = port or free_port()
    full = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DICOMWEB_DATA_DIR": str(data),
        "DICOMWEB_STORAGE_PATH": str(data / "objects"),
        "DICOMWEB_GC_INTERVAL_SECONDS": "0",
        "DICOMWEB_SIGNING_KEYS": str(KEYS_FILE),
        "DICOMWEB_ISSUER": f"http://127.0.0.1:{port}",
        **env,
    }
    log = data / f"server-{port}.log"
    data.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomweb_server.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, full, log)
    _STARTED.append(server)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    server.stop("kill")
    raise RuntimeError(f"server did not become ready: {log.read_text()[-2000:]}")


@pytest.fixture
def live_server(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> Iterator[Server]:
    """A real uvicorn process serving an empty index, for streaming and third-party clients."""
    server = start_server(database_url, tmp_path / "live")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def curl() -> str:
    path = shutil.which("curl")
    assert path, "curl is required for the end-to-end tests"
    return path


# A skipped test fails the run (DESIGN.md, RELIABILITY.md: a skipped security test must never pass
# unnoticed).  Expected failures (xfail) are reported as such and are not skips.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED:
        print(f"\n{len(_SKIPPED)} test(s) skipped; skips are failures here: {_SKIPPED[:10]}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
