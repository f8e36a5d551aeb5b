"""Launching, probing and stopping server processes that the harness owns."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
import psutil

PR_SET_PDEATHSIG = 1


class TargetUnavailable(RuntimeError):
    """A target could not be started; the run goes on without it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    | {line}" for line in text[-lines:])


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the harness dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """A server process with its own session (process group) and a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self._log.write(f"### {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._log.close()
            raise TargetUnavailable(f"{name}: cannot run {argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetUnavailable(
                    f"{self.name}: exited with code {self.proc.returncode} before becoming ready; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if probe():
                    return
            time.sleep(0.2)
        raise TargetUnavailable(
            f"{self.name}: not ready after {timeout:.0f}s; log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the server (graceful), then SIGKILL whatever is left of its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"[{self.name}] did not stop within {grace:.0f}s, killing", flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        return httpx.get(url, timeout=2.0).status_code == 200

    return probe


def processes_using(directory: Path, exclude: set[int]) -> list[int]:
    """PIDs of processes whose command line mentions ``directory`` (e.g. a server's own PostgreSQL)."""
    needle, pids = str(directory), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] not in exclude and any(needle in arg for arg in cmdline):
            pids.append(int(proc.info["pid"]))
    return pids


def terminate_leftovers(directory: Path, label: str) -> None:
    """Stop side processes (started on our behalf) that outlived their server, by PID."""
    me = psutil.Process()
    exclude = {me.pid, *(p.pid for p in me.parents())}
    leftovers = [psutil.Process(pid) for pid in processes_using(directory, exclude)]
    if not leftovers:
        return
    print(f"[{label}] terminating leftover processes {[p.pid for p in leftovers]}", flush=True)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
