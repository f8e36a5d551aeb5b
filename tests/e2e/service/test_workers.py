"""Several worker processes behind one port (workers.py): connections spread evenly, a dead worker
is replaced, and SIGTERM lets a request in flight finish before everything stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import Server, start_server
from tests.support.dicomfiles import instance


def _workers(server: Server) -> list[int]:
    """The primary's worker processes (its children running a multiprocessing spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == server.process.pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _server_side_inodes(port: int, state: str = "01") -> set[int]:
    """Inodes of the sockets in ``state`` (01 ESTABLISHED, 08 CLOSE_WAIT) whose local end is ``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state:
            inodes.add(int(fields[9]))
    return inodes


def _owned(pid: int, inodes: set[int]) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            count += 1
    return count


def _wait_for(predicate, seconds: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _keepalive_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0] + b" "
    return sock


def test_simultaneous_keepalive_connections_spread_evenly(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "spread", workers=2)
    try:
        pids = _wait_for(lambda: (p := _workers(server)) and len(p) == 2 and p)
        port = int(server.url.rsplit(":", 1)[1])
        # Start from no connection at all: a probe of the server's own start-up (the walk-through's
        # announcer polls /readyz until it answers) may still be open, and would count on a worker.
        _wait_for(lambda: not _server_side_inodes(port))
        conns = [_keepalive_request(port) for _ in range(4)]
        try:
            inodes = _server_side_inodes(port)
            assert len(inodes) == 4
            assert [_owned(pid, inodes) for pid in pids] == [2, 2]
            # A closed connection frees its worker's place: the next one goes there.
            conns.pop(0).close()
            # The worker has closed its end (so counted the connection as gone) when no server-side
            # socket waits in CLOSE_WAIT any more.
            _wait_for(lambda: len(_server_side_inodes(port)) == 3 and not _server_side_inodes(port, "08"))
            time.sleep(0.1)  # connection_lost runs just after that close, in the same loop turn or the next
            conns.append(_keepalive_request(port))
            inodes = _server_side_inodes(port)
            assert [_owned(pid, inodes) for pid in pids] == [2, 2]
        finally:
            for conn in conns:
                conn.close()
    finally:
        server.stop()
    assert server.process.returncode == 0
    # The workers log like a single process does (uvicorn's own workers left logging unconfigured,
    # which dropped every access line).
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    served = [line for line in lines if line.get("message") == "request" and line.get("route") == "/healthz"]
    assert len(served) == 5


def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "restart", workers=2)
    try:
        first = _wait_for(lambda: (p := _workers(server)) and len(p) == 2 and p)
        os.kill(first[0], signal.SIGKILL)
        now = _wait_for(lambda: (p := _workers(server)) and len(p) == 2 and first[0] not in p and p)
        assert first[1] in now
        # Every new connection is served, whichever worker it is given to.
        for _ in range(8):
            with httpx.Client() as client:
                assert client.get(server.url + "/readyz", timeout=10).status_code == 200
        log = server.log.read_text()
        assert any(
            json.loads(line).get("event") == "worker_restarted"
            for line in log.splitlines()
            if line.startswith("{")
        )
    finally:
        server.stop()


def test_sigterm_lets_an_upload_in_flight_finish_then_stops_every_process(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "graceful", workers=2)
    workers = _wait_for(lambda: (p := _workers(server)) and len(p) == 2 and p)
    body = instance(size=128)
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: {server.headers['Authorization']}\r\n"
        f"Content-Type: application/dicom\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:1000])
    time.sleep(0.5)  # the worker is reading the body
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sock.sendall(body[1000:])
    response = b""
    sock.settimeout(20)
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(65536)
        assert chunk, response
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert server.process.wait(timeout=30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
