"""The benchmark targets: our server, Orthanc (SQLite / PostgreSQL index) and the loopback sink."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.orthanc import OrthancTarget
from bench.procs import ManagedProcess, TargetUnavailable, free_port, http_ok, terminate_leftovers
from bench.target import Endpoint, Target

REPO = Path(__file__).resolve().parent.parent
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))  # uvicorn worker processes, ours and sink alike
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def ours_executable() -> Path | None:
    beside_python = Path(sys.executable).parent / "dicomweb-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("dicomweb-server")
    return Path(found) if found else None


def ours_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "no-commit"
    dirty = git("status", "--porcelain", "--", "dicomweb_server", "pyproject.toml")
    return f"{rev}+dirty" if dirty else rev


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

    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        self._workdir = workdir
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self._proc = ManagedProcess(
            self.name, self.argv(port), log_dir / f"{self.name}.log", env=self.env(workdir), cwd=REPO
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
    name = "ours"

    def __init__(self, executable: Path | None = None) -> None:
        super().__init__()
        self.executable = executable

    def argv(self, port: int) -> list[str]:
        exe = self.executable or ours_executable()
        if exe is None or not exe.exists():
            raise TargetUnavailable(
                "ours: no dicomweb-server executable (is the package installed in the venv?)"
            )
        return [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]

    def env(self, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # use the embedded PostgreSQL
        data_dir = workdir / "data"
        data_dir.mkdir(exist_ok=True)
        env["DICOMWEB_DATA_DIR"] = str(data_dir)
        return env


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
            "bench.sink:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            *UVICORN_FLAGS,
        ]


TARGET_NAMES = ("ours", "orthanc-sqlite", "orthanc-postgresql", "sink")


def make_target(name: str, pg_index_connections: int = 1, ours_bin: Path | None = None) -> Target:
    if name == "ours":
        return OursTarget(ours_bin)
    if name == "sink":
        return SinkTarget()
    if name == "orthanc-sqlite":
        return OrthancTarget(postgres=False)
    if name == "orthanc-postgresql":
        return OrthancTarget(postgres=True, index_connections=pg_index_connections)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGET_NAMES)}")
