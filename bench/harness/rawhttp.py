"""A lean HTTP/1.1 client for the measured requests (retrieve GETs and STOW POSTs).

On a 2-core machine the client shares the CPUs with the server; httpx reading a 79 MB study spends
about a core on its own at 600 MB/s, and a few hundred microseconds per small request. Sending, it
copies the part of a body the socket does not take at once into a fresh buffer: for a 26 MB STOW
body that is some 6,000 newly faulted and zeroed pages per request, about a quarter of a core here.
This client does only what the measurement needs: one keep-alive connection, a prebuilt body sent in
1 MiB slices of the caller's bytes, Content-Length, chunked or close-delimited response bodies read in
large blocks and handed to a callback (nothing is kept unless asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

READ_SIZE = 1 << 20
WRITE_SLICE = 1 << 20


class HttpError(Exception):
    """The connection failed or the response was not HTTP/1.1 as expected."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    nbytes: int = 0
    first_byte: float = 0.0  # seconds from sending the request to the first body byte
    elapsed: float = 0.0  # seconds from sending the request to the end of the body
    body: bytearray = field(default_factory=bytearray)  # only with keep_body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class Connection:
    """One keep-alive connection to ``base_url``'s host; reconnects when the server closes it."""

    def __init__(self, base_url: str, timeout: float = 900.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs: {base_url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout  # seconds for one whole request
        self.headers = dict(headers or {})  # sent with every request (e.g. Authorization)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answered = False  # the current request's status line arrived

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def get(
        self,
        url: str,
        headers: dict[str, str],
        on_chunk: Callable[[Answer, bytes], object] | None = None,
        keep_body: bool = False,
        rate: float = 0.0,
    ) -> Answer:
        """GET ``url``; every body block goes to ``on_chunk``; ``rate`` (bytes/s) throttles reading.

        The body is kept in ``Answer.body`` with ``keep_body``, and always for an error status."""
        return await self.request("GET", url, headers, None, on_chunk, keep_body, rate)

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        """POST ``body`` (sent from the caller's bytes, never copied whole); the answer's body is kept."""
        return await self.request("POST", url, headers, body, keep_body=True)

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        on_chunk: Callable[[Answer, bytes], object] | None = None,
        keep_body: bool = False,
        rate: float = 0.0,
    ) -> Answer:
        path = urlsplit(url)
        target = path.path + (f"?{path.query}" if path.query else "")
        fields = {**self.headers, **headers}
        if body is not None:
            fields["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        fresh = self._writer is None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(head.encode(), body, on_chunk, keep_body, rate)
        except (OSError, ValueError, HttpError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()
            if fresh or self._answered or isinstance(exc, TimeoutError):
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        # A kept-alive connection the server had closed before answering: once more on a new one.
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(head.encode(), body, on_chunk, keep_body, rate)
        except (OSError, ValueError, HttpError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(
        self,
        request: bytes,
        body: bytes | None,
        on_chunk: Callable[[Answer, bytes], object] | None,
        keep_body: bool,
        rate: float,
    ) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 16)
        reader, writer = self._reader, self._writer
        assert reader is not None
        self._answered = False
        t0 = time.perf_counter()
        writer.write(request)
        if body:
            view = memoryview(body)
            for start in range(0, len(view), WRITE_SLICE):
                writer.write(view[start : start + WRITE_SLICE])
                await writer.drain()
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed before the status line")
        self._answered = True
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        answer = Answer(int(fields[1]), {})
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            answer.headers[key] = (
                f"{answer.headers[key]}, {value.strip()}" if key in answer.headers else value.strip()
            )

        keep = keep_body or answer.status >= 300

        def take(block: bytes) -> None:
            if not answer.nbytes:
                answer.first_byte = time.perf_counter() - t0
            answer.nbytes += len(block)
            if on_chunk is not None:
                on_chunk(answer, block)
            if keep:
                answer.body += block

        async def pace() -> None:
            if rate:
                ahead = answer.nbytes / rate - (time.perf_counter() - t0)
                if ahead > 0.001:
                    await asyncio.sleep(ahead)

        async def span(remaining: int) -> None:
            """Exactly ``remaining`` body bytes, in blocks."""
            while remaining > 0:
                block = await reader.read(min(remaining, READ_SIZE))
                if not block:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(block)
                take(block)
                await pace()

        close = answer.headers.get("connection", "").lower() == "close"
        if answer.status in (204, 304) or answer.status < 200:
            pass  # no body
        elif "chunked" in answer.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                await span(size)
                await reader.readexactly(2)
        elif "content-length" in answer.headers:
            await span(int(answer.headers["content-length"]))
        else:  # delimited by the end of the connection
            close = True
            while block := await reader.read(READ_SIZE):
                take(block)
                await pace()
        answer.elapsed = time.perf_counter() - t0
        if close:
            await self.close()
        return answer
