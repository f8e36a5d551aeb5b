"""Connection limits on real sockets against a real server process (connections.py, README "Limits").

The server runs with small limits (2 s) so that each case takes seconds: a connection that says
nothing, headers that trickle, an idle keep-alive connection and a body that stalls are all
closed; a slow but steady 100 MB upload is stored; past the connection cap a new connection gets
a clear 503.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.support.dicomfiles import content_type, instance, multipart

LIMITS = {
    "DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS": "2",
    "DICOMWEB_KEEP_ALIVE_SECONDS": "1",
    "DICOMWEB_BODY_RATE_WINDOW_SECONDS": "2",
    "DICOMWEB_BODY_MIN_RATE": str(256 * 1024),  # 512 KiB per 2 s window
    "DICOMWEB_HTTP_HEADER_MAX_BYTES": str(16 * 1024),
}
SLACK = 3.0  # seconds beyond a limit before a test calls it not enforced


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(database_url, tmp_path_factory.mktemp("limits"), **LIMITS)
    yield s
    s.stop()


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    sock.settimeout(30)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what the server sends for these requests)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def _request(server: Server, method: str, path: str, length: int, extra: str = "") -> bytes:
    auth = server.headers["Authorization"]
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        received, took = _closed_within(sock, 2 + SLACK)
    assert received == b""  # nobody to answer: closed without a word
    assert took < 2 + SLACK


def test_headers_that_trickle_get_408(server: Server) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 40 + b"\r\n\r\n"
    started = time.monotonic()
    with _connect(server) as sock:
        with pytest.raises(OSError):  # the server closes while we are still sending
            for byte in request:
                sock.send(bytes([byte]))
                time.sleep(0.2)  # each byte resets no timer: the headers as a whole are late
        received, _ = _closed_within(sock, SLACK)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received.lower()
    assert time.monotonic() - started < 2 + SLACK


def test_a_partial_header_gets_408(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        received, took = _closed_within(sock, 2 + SLACK)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert took < 2 + SLACK


def test_oversized_headers_get_431(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"y" * 20_000)
        received, _ = _closed_within(sock, SLACK)
    assert received.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Many: y\r\n" * 2_000 + b"\r\n", 431),
        (b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    ],
    ids=["one-big-field", "many-fields", "long-request-line"],
)
def test_oversized_complete_headers_sent_at_once_are_refused(
    server: Server, request_head: bytes, status: int
) -> None:
    """Headers that end within one read are counted as they are parsed, however they arrive."""
    with _connect(server) as sock:
        sock.sendall(request_head)
        got, headers, body = _read_response(sock)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == status


def test_an_http_1_1_request_without_host_is_400(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        status, headers, body = _read_response(sock)
    assert status == 400 and headers["content-type"] == "application/json"
    assert "Host" in json.loads(body)["message"]
    with _connect(server) as sock:  # HTTP/1.0 has no Host requirement
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert _read_response(sock)[0] == 200


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = _read_response(sock)
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # kept alive: it works
        assert _read_response(sock)[0] == 200
        received, took = _closed_within(sock, 1 + SLACK)
    assert received == b""
    assert took < 1 + SLACK


async def test_a_stalled_body_is_cut_and_nothing_is_stored(server: Server, db: asyncpg.Pool) -> None:
    sop, request_id = generate_uid(), f"stalled-{generate_uid()[-12:]}"
    body = multipart([instance(sop=sop, size=512)])  # 512 KiB of pixels
    with _connect(server) as sock:
        sock.sendall(
            _request(
                server,
                "POST",
                "/dicomweb/studies",
                len(body),
                f"Content-Type: {content_type()}\r\nX-Request-Id: {request_id}\r\n",
            )
        )
        sock.sendall(body[: len(body) // 2])  # then nothing more
        received, took = _closed_within(sock, 2 * 2 + SLACK)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b'"status": 408' in received  # the JSON error form, as every other error
    assert took < 2 * 2 + SLACK  # at most two windows: the first one still saw the bytes above
    assert await db.fetchval("SELECT count(*) FROM instance WHERE sop_uid = $1", sop) == 0
    # The access line and the audit row say what the client was told (408), not a server error.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = await db.fetchrow("SELECT status, outcome FROM audit WHERE request_id = $1", request_id)
        if row is not None:
            break
        await asyncio.sleep(0.1)
    assert row is not None and (row["status"], row["outcome"]) == (408, 4)
    lines = [line for line in server.log.read_text().splitlines() if request_id in line]
    assert any('"status":408' in line and '"message":"request"' in line for line in lines), lines
    assert "Exception in ASGI application" not in server.log.read_text()
    with _connect(server) as sock:  # the server is fine
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(sock)[0] == 200


@pytest.mark.slow
async def test_a_slow_but_steady_100_mb_upload_is_stored(server: Server, db: asyncpg.Pool) -> None:
    """1 MiB every 100 ms for about 10 s: five times the 2 s limits, and still stored whole."""
    sop = generate_uid()
    part = instance(sop=sop, size=7250)  # 7250 x 7250 x 2 bytes: 100 MiB of pixels
    body = multipart([part])
    assert len(body) > 100 * 1024 * 1024
    started = time.monotonic()

    def send() -> tuple[int, dict[str, str], bytes]:
        with _connect(server) as sock:
            sock.sendall(
                _request(
                    server, "POST", "/dicomweb/studies", len(body), f"Content-Type: {content_type()}\r\n"
                )
            )
            for at in range(0, len(body), 1024 * 1024):
                sock.sendall(body[at : at + 1024 * 1024])
                time.sleep(0.1)
            return _read_response(sock)

    status, _, answer = await asyncio.to_thread(send)
    assert status == 200, answer[:500]
    assert time.monotonic() - started > 5 * 2  # slower than any total deadline the limits could be
    assert await db.fetchval("SELECT count(*) FROM instance WHERE sop_uid = $1", sop) == 1


def test_past_the_connection_cap_a_connection_gets_503(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, tmp_path / "cap", DICOMWEB_MAX_CONNECTIONS="3")
    try:
        deadline = time.monotonic() + 20
        while "This walk-through is kept in" not in server.log.read_text():  # its /readyz probe is done
            assert time.monotonic() < deadline
            time.sleep(0.1)
        held = [_connect(server) for _ in range(3)]
        for sock in held:  # each one is served: they are open, and counted
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_response(sock)[0] == 200
        with _connect(server) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, _ = _read_response(extra)
            assert status == 503
            assert headers["retry-after"].isdigit() and headers["connection"] == "close"
            assert _closed_within(extra, SLACK)[0] == b""  # and it is closed
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # a slot is free again once the server has seen the close
            with _connect(server) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                if _read_response(sock)[0] == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for sock in held:
            sock.close()
        assert '"event":"connection_refused"' in server.log.read_text()
    finally:
        server.stop()
