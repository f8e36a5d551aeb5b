"""Connection limits uvicorn does not have: header time and size, body rate, open connections.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``, set from
``DICOMWEB_KEEP_ALIVE_SECONDS``), but only after a response: a connection that never sends a
byte, headers sent one byte every few seconds, or a body that stops half way are held for
ever (slow loris; RELIABILITY.md "Limits": idle and total request time).  Its
``limit_concurrency`` answers 503 only once a request's headers have arrived, so slow
connections still hold their descriptors, and it gives no ``Retry-After``.  This protocol,
uvicorn's httptools protocol with four guards, closes that gap for one worker process:

- **Request headers** must arrive within ``header_timeout`` seconds of the connection (or of the
  first byte of the next request on a keep-alive connection): a partial request then gets
  ``408`` and is closed, a connection that sent nothing is closed silently.  They may not
  exceed ``max_header_bytes`` (``431``); httptools itself has no limit.
- **Request bodies** must keep arriving at ``body_min_rate`` bytes a second, averaged over
  windows of ``body_window`` seconds.  A slow but steady upload passes; one that stalls is cut
  (``408`` if no response has started), so the application sees a disconnect and stores
  nothing.  A window in which *we* stopped reading (the application busy, or a
  ``100-continue`` not yet sent) does not count against the client.
- **Open connections**: past ``max_connections`` in this worker a new connection is answered
  ``503`` with ``Retry-After`` and ``Connection: close`` at once, without waiting for its
  request, and logged (at most once a second).

Apache's mod_reqtimeout (``header=20-40,MinRate=500 body=20,MinRate=500``) is the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dicomweb_server.errors import CONNECTION_STATUS
from dicomweb_server.settings import HttpSettings

log = logging.getLogger("dicomweb_server.web.connections")

REFUSAL_LINGER = 1.0  # seconds a refused connection is drained before it closes (so the 503 is read)
_RESERVED_FDS = 64  # descriptors a worker keeps for its database pool, files and storage


@dataclass(frozen=True)
class ConnectionLimits:
    """One worker's limits (defaults and meaning: ``HttpSettings``, README)."""

    header_timeout: float
    max_header_bytes: int
    body_min_rate: int  # bytes per second; 0 turns the check off
    body_window: float
    max_connections: int  # per worker process
    retry_after: int = 5  # seconds, in the 503 of a refused connection

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> ConnectionLimits:
        """The configured limits; the connection cap never above what the descriptor limit allows."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = settings.max_connections
        if soft != resource.RLIM_INFINITY:
            cap = max(1, min(cap, soft - _RESERVED_FDS))
        return cls(
            header_timeout=settings.header_timeout,
            max_header_bytes=settings.header_max_bytes,
            body_min_rate=settings.body_min_rate,
            body_window=settings.body_rate_window,
            max_connections=cap,
        )


class _HeadersTooLarge(Exception):
    """Raised from a parser callback: httptools stops, and send_400_response answers 431/414."""


def _response(status: bytes, message: str, retry_after: int | None = None) -> bytes:
    """A complete error response in the server's JSON error form (web.errors.on_error's)."""
    code = int(status[:3])
    text = json.dumps({"status": code, "message": message}).encode()
    lines = [b"HTTP/1.1 " + status, b"content-type: application/json", b"connection: close"]
    if retry_after is not None:
        lines.append(b"retry-after: " + str(retry_after).encode())
    lines.append(b"content-length: " + str(len(text)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + text


class _Flow(FlowControl):
    """uvicorn's flow control, remembering whether reading was paused since the last body check."""

    paused_since_check = False

    def pause_reading(self) -> None:
        self.paused_since_check = True
        super().pause_reading()


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, body-rate and connection-count limits."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.on_closed = on_closed  # workers.py counts closed connections per worker
        self.refused = False
        self.awaiting_headers = True  # between requests, or inside a request's headers
        self.header_bytes = 0
        self.header_size = 0  # request line and header fields of the request being parsed
        self.too_large: bytes | None = None  # the status that send_400_response answers instead
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.window_bytes = 0

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)  # type: ignore[arg-type]
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self.flow = _Flow(self.transport)
        self._arm_header_timer()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.refused = True
        self.transport = transport
        transport.write(
            _response(
                b"503 Service Unavailable",
                "Too many open connections; try again shortly",
                retry_after=self.limits.retry_after,
            )
        )
        if transport.can_write_eof():
            transport.write_eof()
        # Read (and drop) the request for a moment: closing with unread bytes would reset the
        # connection, and the client might lose the 503 before reading it.
        self.loop.call_later(REFUSAL_LINGER, transport.close)
        now = time.monotonic()
        state = self.server_state
        if now - getattr(state, "refusal_logged_at", 0.0) >= 1.0:
            setattr(state, "refusal_logged_at", now)  # noqa: B010  # one per worker's server
            log.warning(
                "refused a connection: %d open in this worker (DICOMWEB_MAX_CONNECTIONS)",
                len(self.connections),
                extra={"event": "connection_refused", "limit": self.limits.max_connections},
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if not self.refused:
            super().connection_lost(exc)
        if self.on_closed is not None:
            self.on_closed()

    def eof_received(self) -> None:
        if self.refused:
            self.transport.close()
            return
        super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self.refused or self.parser is None:
            return
        if self.awaiting_headers:
            if self.header_timer is None:
                self._arm_header_timer()  # the first byte of the next request on a kept-alive connection
            self.header_bytes += len(data)
        super().data_received(data)
        if self.awaiting_headers and self.header_bytes > self.limits.max_header_bytes:
            # headers that have not ended yet (a field without its CRLF is not counted by on_header)
            self._cut(b"431 Request Header Fields Too Large", "request headers too large", answer=True)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, in our JSON form; 431 or 414 when
        the request line or the header fields ran past ``max_header_bytes`` (on_url/on_header)."""
        if self.too_large is not None:
            self._cut(self.too_large, "request headers too large", answer=True)
            return
        self.transport.write(_response(b"400 Bad Request", "Invalid HTTP request"))
        self.transport.close()

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.header_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_header(len(url), b"414 URI Too Long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted as parsed, so the limit holds however the bytes were split into reads.
        self._count_header(len(name) + len(value) + 4, b"431 Request Header Fields Too Large")
        super().on_header(name, value)

    def _count_header(self, size: int, status: bytes) -> None:
        self.header_size += size
        if self.header_size > self.limits.max_header_bytes:
            self.too_large = status
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        self._cancel(self.header_timer)
        self.header_timer = None
        self.header_bytes = 0
        super().on_headers_complete()
        if self.limits.body_min_rate > 0:
            self.window_bytes = 0
            self.body_timer = self.loop.call_later(self.limits.body_window, self._check_body)

    def on_body(self, body: bytes) -> None:
        self.window_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.awaiting_headers = True
        self._cancel(self.body_timer)
        self.body_timer = None
        super().on_message_complete()

    # -- timers ---------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or not self.awaiting_headers:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still going out and the next request waits behind it (pipelining):
            # not the client's delay.  Look again later.
            self._arm_header_timer()
            return
        if self.header_bytes == 0:
            self.transport.close()  # connected (or kept alive) and said nothing: nobody to answer
            return
        self._cut(b"408 Request Timeout", "request headers not received in time", answer=True)

    def _check_body(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        flow = self.flow
        ours = flow.read_paused or getattr(flow, "paused_since_check", False)
        ours = ours or self.cycle.waiting_for_100_continue
        if isinstance(flow, _Flow):
            flow.paused_since_check = False
        if not ours and self.window_bytes < self.limits.body_min_rate * self.limits.body_window:
            # No answer once a response has started: it would be read as the next response.
            self._cut(b"408 Request Timeout", "request body too slow", answer=not self.cycle.response_started)
            return
        self.window_bytes = 0
        self.body_timer = self.loop.call_later(self.limits.body_window, self._check_body)

    def _cut(self, status: bytes, why: str, answer: bool) -> None:
        """Answer ``status`` (if ``answer``), then close; the application sees a disconnect, and
        its request's state says why (``CONNECTION_STATUS``), for its log line and audit row."""
        log.info(why, extra={"event": "connection_cut", "status": int(status[:3])})
        cycle = self.cycle
        if answer:
            self.transport.write(_response(status, why[0].upper() + why[1:]))
        if cycle is not None and not cycle.response_complete:
            if answer:
                cycle.scope.setdefault("state", {})[CONNECTION_STATUS] = int(status[:3])
            cycle.disconnected = True
            cycle.message_event.set()
        self._cancel_timers()
        self.transport.close()

    def _cancel_timers(self) -> None:
        self._cancel(self.header_timer)
        self._cancel(self.body_timer)
        self.header_timer = self.body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
