"""Run a throwaway ``redis-server`` for tests (Debian package ``redis-server``).

Usage::

    with run_redis(tmp_path) as server:
        ...  # server.url ("redis://127.0.0.1:<port>/0"), server.stop(), server.start()

It listens on 127.0.0.1 only, on a freshly picked port, with persistence off
(``--save '' --appendonly no``), and is stopped by its PID on exit.  A missing binary
is an error, never a skip: the rate-limit tests it serves are security tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
BINARY = "/usr/bin/redis-server"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3


class RedisStartupError(RuntimeError):
    pass


def find_redis_server() -> str:
    if os.access(BINARY, os.X_OK):
        return BINARY
    found = shutil.which("redis-server")
    if found is None:
        raise RedisStartupError(
            f"{BINARY} not found: install the Debian package 'redis-server' "
            "(apt-get install redis-server); the rate-limit tests need a real Redis"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``stop`` and ``start`` again keep the port (outage tests)."""

    def __init__(self, workdir: Path):
        self.binary = find_redis_server()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def start(self) -> None:
        """Start on ``self.port`` if set (a restart), else on a newly picked free port."""
        fixed = self.port != 0
        for _attempt in range(1 if fixed else _PORT_ATTEMPTS):
            if not fixed:
                self.port = _free_port()
            self.proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # exited: most likely the port was taken meanwhile
                if _ping(self.port):
                    return
                time.sleep(0.02)
            self.stop()
        raise RedisStartupError(f"redis-server did not start on {HOST}:{self.port}; see {self.log_path}")

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def run_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(Path(workdir).resolve())
    try:
        server.start()
        yield server
    finally:
        server.stop()


__all__ = ["RedisServer", "RedisStartupError", "find_redis_server", "run_redis"]
