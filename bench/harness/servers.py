"""The benchmark targets: our server, Orthanc (SQLite / PostgreSQL index) and the loopback sink."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx

from bench.harness.orthanc import OrthancTarget
from bench.harness.procs import ManagedProcess, TargetUnavailable, free_port, http_ok, terminate_leftovers
from bench.harness.target import Endpoint, Target

REPO = Path(__file__).resolve().parents[2]
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))  # uvicorn worker processes, ours and sink alike
# Per-client rate limit for ours: counted (the limiter is active) but never reached, so that the
# benchmark measures the server, not the limiter.
RATE_REQUESTS = 10**9
RATE_BYTES = 10**15
ACCESS_SUBJECT = "Access: OAuth2 client credentials"  # the commit that put every route behind a token
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def ours_executable() -> Path | None:
    beside_python = Path(sys.executable).parent / "dicomweb-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("dicomweb-server")
    return Path(found) if found else None


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def ours_revision(source: Path | None = None) -> str:
    if source is not None:  # an export made by export_revision(): its directory is named by the commit
        return f"{source.name[:7]} (exported; the work tree is not used)"
    rev = _git("rev-parse", "--short", "HEAD") or "no-commit"
    dirty = _git("status", "--porcelain", "--", "dicomweb_server", "pyproject.toml", "alembic")
    return f"{rev}+dirty" if dirty else rev


def export_revision(rev: str, cache_dir: Path) -> Path:
    """``git archive`` of ``rev`` under ``cache_dir`` (once per commit), for running ours at a commit
    while the work tree holds someone's unfinished changes. The venv's packages are used as they are."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if not sha:
        raise SystemExit(f"bench: no such revision {rev!r}")
    target = cache_dir / "ours-src" / sha
    if not (target / "dicomweb_server").is_dir():
        partial = target.with_name(sha + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha, "dicomweb_server", "alembic", "alembic.ini"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        partial.rename(target)
    return target


def baseline_revision() -> str:
    """The commit just before the access layer (token guard + rate limits) landed."""
    sha = _git("log", "-1", "--format=%H", "--fixed-strings", f"--grep={ACCESS_SUBJECT}", "HEAD")
    if not sha:
        raise SystemExit(f"bench: no commit whose message has {ACCESS_SUBJECT!r}; pass --baseline-rev")
    return f"{sha}^"


class _UvicornLike(Target):
    """A server process started on a free port, ready when ``ready_path`` answers 200."""

    ready_path = "/readyz"
    dicomweb_path = "/dicomweb"
    stores_dicom = True
    ready_timeout = 180.0

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None
        self._workdir: Path | None = None

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, workdir: Path) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return REPO

    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        self._workdir = workdir
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self._proc = ManagedProcess(
            self.name, self.argv(port), log_dir / f"{self.name}.log", env=self.env(workdir), cwd=self.cwd()
        )
        self._proc.wait_ready(http_ok(base + self.ready_path), self.ready_timeout)
        return Endpoint(
            self.name,
            base,
            base + self.dicomweb_path,
            self._proc.pid,
            workdir,
            self._proc.log_path,
            stores_dicom=self.stores_dicom,
        )

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._workdir is not None:
            terminate_leftovers(self._workdir, self.name)


class OursTarget(_UvicornLike):
    """Ours with the access layer: a token for the dev client (bootstrapped by ``serve`` on loopback)
    is fetched after the start and sent with every request. A revision from before the access layer
    has no dev client: its requests go without a token."""

    name = "ours"

    def __init__(self, executable: Path | None = None, source: Path | None = None) -> None:
        super().__init__()
        self.executable = executable
        self.source = source  # an exported revision to run instead of the work tree

    def cwd(self) -> Path:
        return self.source or REPO  # multiprocessing's spawned workers put their cwd first on sys.path

    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        self.before_start(workdir)
        endpoint = super().start(workdir, log_dir)
        if self.source is not None:
            endpoint.notes["source"] = f"exported {self.source.name[:7]}"
        return self.authorize(endpoint, workdir / "data" / "dev-client.json")

    def before_start(self, workdir: Path) -> None:
        """Side services the server needs (ours-redis: its Redis)."""

    def authorize(self, endpoint: Endpoint, credentials: Path) -> Endpoint:
        """The endpoint with ``Authorization: Bearer`` for the dev client (client credentials grant)."""
        if not credentials.exists():
            endpoint.notes["auth"] = "none (this revision has no access layer)"
            return endpoint
        client = json.loads(credentials.read_text())
        try:
            response = httpx.post(
                f"{endpoint.base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
                timeout=30.0,
            )
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise TargetUnavailable(f"{self.name}: no access token from /oauth/token: {exc}") from exc
        endpoint.notes["auth"] = (
            f"bearer token of {client['client_id']} (scopes {answer.get('scope', '?')}, "
            f"expires in {answer.get('expires_in', '?')} s); rate limit {RATE_REQUESTS:.0e} requests, "
            f"{RATE_BYTES:.0e} bytes per window"
        )
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        from dicomweb_server.access.admin import DEV_TENANT

        return replace(endpoint, headers=headers, tenant=DEV_TENANT)

    def argv(self, port: int) -> list[str]:
        exe = self.executable or ours_executable()
        if exe is None or not exe.exists():
            raise TargetUnavailable(
                "ours: no dicomweb-server executable (is the package installed in the venv?)"
            )
        return [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]

    def env(self, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # use the embedded PostgreSQL
        for name in [k for k in env if k.startswith(("DICOMWEB_RATE", "DICOMWEB_SIGNING"))]:
            del env[name]  # the harness decides: dev keys and client bootstrapped, limits below
        data_dir = workdir / "data"
        data_dir.mkdir(exist_ok=True)
        env["DICOMWEB_DATA_DIR"] = str(data_dir)
        env["DICOMWEB_RATE_REQUESTS"] = str(RATE_REQUESTS)
        env["DICOMWEB_RATE_BYTES"] = str(RATE_BYTES)
        if self.source is not None:  # first on the path, also for the uvicorn workers it spawns
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        return env


class OursBaselineTarget(OursTarget):
    """Ours from the commit just before the access layer: the no-auth baseline of the access A/B."""

    name = "ours-noauth"


class OursRedisTarget(OursTarget):
    """Ours with the rate-limit counters in a Redis of its own (``redis-server`` on a free port,
    no persistence), database 15: the shared-storage variant of the access measurement."""

    name = "ours-redis"
    redis_db = 15

    def __init__(self, executable: Path | None = None, source: Path | None = None) -> None:
        super().__init__(executable, source)
        self._redis: ManagedProcess | None = None
        self.redis_port = 0

    def before_start(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise TargetUnavailable("ours-redis: no redis-server on PATH")
        self.redis_port = free_port()
        redis_dir = workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        argv = [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(redis_dir)]
        self._redis = ManagedProcess("redis", argv, workdir / "redis.log")
        self._redis.wait_ready(self._redis_up, 20.0)

    def _redis_up(self) -> bool:
        return self.redis_cli("PING") == "PONG"

    def redis_cli(self, *command: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), "-n", str(self.redis_db), *command],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip()

    def env(self, workdir: Path) -> dict[str, str]:
        env = super().env(workdir)
        env["DICOMWEB_RATE_LIMIT_STORAGE"] = f"async+redis://127.0.0.1:{self.redis_port}/{self.redis_db}"
        return env

    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        endpoint = super().start(workdir, log_dir)
        endpoint.notes["rate-limit storage"] = f"redis-server 127.0.0.1:{self.redis_port}/{self.redis_db}"
        return endpoint

    def stop(self) -> None:
        super().stop()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


class SinkTarget(_UvicornLike):
    name = "sink"
    dicomweb_path = ""
    stores_dicom = False
    ready_timeout = 30.0

    def argv(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.harness.sink:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            *UVICORN_FLAGS,
        ]


# ours-redis and ours-noauth only run the access suite: right after ours's access session, so the
# A/B of the access overhead is measured back to back.
TARGET_NAMES = ("ours", "ours-redis", "ours-noauth", "orthanc-sqlite", "orthanc-postgresql", "sink")


def make_target(
    name: str,
    pg_index_connections: int = 1,
    ours_bin: Path | None = None,
    ours_src: Path | None = None,
    baseline_src: Path | None = None,
) -> Target:
    if name == "ours":
        return OursTarget(ours_bin, ours_src)
    if name == "ours-redis":
        return OursRedisTarget(ours_bin, ours_src)
    if name == "ours-noauth":
        if baseline_src is None:
            raise ValueError("ours-noauth needs the exported baseline revision")
        return OursBaselineTarget(ours_bin, baseline_src)
    if name == "sink":
        return SinkTarget()
    if name == "orthanc-sqlite":
        return OrthancTarget(postgres=False)
    if name == "orthanc-postgresql":
        return OrthancTarget(postgres=True, index_connections=pg_index_connections)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGET_NAMES)}")
