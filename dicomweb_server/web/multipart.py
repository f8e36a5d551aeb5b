"""``multipart/related`` (RFC 2387): streaming reading over python-multipart's push parser, and
the one response writer.

Reading is pure: chunks in, events out.  The caller awaits whatever each event needs (a
storage write) before feeding the next chunk, which gives backpressure.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicomweb_server.errors import BadRequest, PayloadTooLarge

MAX_BOUNDARY = 70  # RFC 2046 §5.1.1
MAX_PREAMBLE = 65536
MAX_PADDING = 1024  # transport padding after a delimiter (RFC 2046 §5.1.1 sets no bound)


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: lower-case type and parameters (values unquoted)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(value: str | None) -> MediaType:
    """Parse a Content-Type header liberally: quoted or bare parameters, extra whitespace."""
    ctype, options = parse_options_header(value or "")
    params = {k.decode("latin-1").lower().strip(): v.decode("latin-1").strip() for k, v in options.items()}
    return MediaType(ctype.decode("latin-1").strip().lower(), params)


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class PartData:
    data: bytes | memoryview  # a zero-copy view into the fed chunk where possible


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class MultipartReader:
    """Feed body chunks, collect part events; ``close()`` checks the body ended properly."""

    def __init__(self, boundary: str, *, max_header_bytes: int = 16384, max_headers: int = 32):
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise BadRequest(f"multipart boundary must be 1 to {MAX_BOUNDARY} characters")
        self._events: list[Event] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._max_header_bytes = max_header_bytes
        self._ended = False
        self._boundary = boundary
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._marker = b"\r\n" + self._delimiter  # a delimiter after the first (RFC 2046 §5.1.1)
        self._pend: bytes | None = None  # bytes right after a delimiter, held back: padding or not?
        self._tail = b""  # the last bytes passed on, to find a delimiter split between chunks
        self._preamble: bytearray | None = bytearray()  # None once the first delimiter was found
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=max_headers,
            max_header_size=max_header_bytes,
        )

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse one chunk and return the events it completed."""
        if self._ended:
            return []  # epilogue after the close delimiter is ignored (RFC 2046 §5.1.1)
        if self._preamble is not None:
            chunk = self._skip_preamble(chunk)
            if self._preamble is None:  # found: the first delimiter is read like the others
                self._tail = b"\r\n"
        if chunk:
            chunk = self._without_padding(chunk)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            if str(exc).startswith("Maximum header"):  # python-multipart's per-line and count limits
                raise PayloadTooLarge(f"multipart part headers exceed the configured limits: {exc}") from None
            raise BadRequest(f"Malformed multipart body: {exc}") from None
        events, self._events = self._events, []
        return events

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """Drop any preamble before the first delimiter (RFC 2046 allows one; the parser does not)."""
        assert self._preamble is not None
        self._preamble += chunk
        buf, search = self._preamble, 0
        while (at := self._find_delimiter(buf, search)) >= 0:
            after = bytes(buf[at + len(self._delimiter) : at + len(self._delimiter) + 2])
            if len(after) < 2:
                return b""  # wait for the bytes that tell a delimiter from a line of preamble
            if after in (b"\r\n", b"--") or after[:1] in (b" ", b"\t"):
                self._preamble = None
                return bytes(buf[at:])
            if after[:1] == b"\n":
                raise BadRequest(
                    f"Malformed multipart body: the boundary delimiter --{self._boundary} is followed "
                    "by a bare LF; multipart lines must end in CRLF"
                )
            search = at + 1
        if len(buf) > MAX_PREAMBLE:
            raise BadRequest(self._no_delimiter())
        return b""

    def _no_delimiter(self) -> str:
        return (
            f"Malformed multipart body: no boundary delimiter found: the body does not contain "
            f"--{self._boundary} followed by CRLF (check the boundary parameter; lines must end in CRLF)"
        )

    def _without_padding(self, chunk: bytes) -> bytes:
        """Drop transport padding (spaces, tabs) after each boundary delimiter: RFC 2046 §5.1.1
        allows it, python-multipart does not.  The boundary cannot occur in a part's content, so
        ``CRLF --boundary`` always starts a delimiter.  Only the padding itself is ever held back
        (until the byte after it shows it is padding); a chunk without one passes untouched."""
        data = self._pend + chunk if self._pend is not None else chunk
        after_marker, self._pend = self._pend is not None, None
        pieces: list[bytes] = []
        start = cursor = 0
        while True:
            end = 0 if after_marker else self._next_marker(data, cursor)
            after_marker = False
            if end < 0:
                break
            decided = _padding(data[end:])
            if decided is None:  # the padding may go on: hold it back
                self._pend = data[end:]
                data = data[:end]
                break
            replacement, length = decided
            if length:
                pieces += [data[start:end], replacement]
                start = end + length
            cursor = end + max(length, 1)
        out = b"".join([*pieces, data[start:]]) if pieces else data
        keep = len(self._marker) - 1
        self._tail = (self._tail + out[-keep:])[-keep:]
        return out

    def _next_marker(self, data: bytes, cursor: int) -> int:
        """The end (in ``data``) of the next delimiter that ends after ``cursor``, or -1."""
        marker = self._marker
        if cursor == 0 and self._tail:  # one that began in the previous chunk
            window = self._tail + data[: len(marker) - 1]
            at = window.find(marker)
            if at >= 0:
                return at + len(marker) - len(self._tail)
        at = data.find(marker, cursor)
        return at + len(marker) if at >= 0 else -1

    def _find_delimiter(self, buf: bytearray, start: int) -> int:
        """Offset of the boundary delimiter at the start of the body or of a line, or -1."""
        if start == 0 and buf.startswith(self._delimiter):
            return 0
        found = buf.find(b"\n" + self._delimiter, max(0, start - 1))
        return found + 1 if found >= 0 else -1

    def close(self) -> None:
        """The body is over: it must have ended with the close delimiter."""
        if self._pend and not self._ended:  # what followed the last delimiter was not padding
            self._parser.write(self._pend)
            self._pend = None
        if self._preamble is not None:
            raise BadRequest(self._no_delimiter())
        if not self._ended:
            raise BadRequest(
                f"Malformed multipart body: it ends before the close delimiter --{self._boundary}--"
            )

    # python-multipart callbacks -------------------------------------------------
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._count(end - start)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._count(end - start)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._max_header_bytes:
            raise PayloadTooLarge("multipart part headers exceed the configured size")

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._events.append(PartStart(self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            # Views into an immutable fed chunk stay valid; the parser's own look-behind buffer is copied.
            view = memoryview(data)[start:end] if isinstance(data, bytes) else bytes(data[start:end])
            self._events.append(PartData(view))

    def _on_part_end(self) -> None:
        self._events.append(PartEnd())

    def _on_end(self) -> None:
        self._ended = True


def _padding(after: bytes) -> tuple[bytes, int] | None:
    """What follows a boundary delimiter: ``(replacement, n)`` to put in place of its first ``n``
    bytes (the padding), or None while it cannot be told yet."""
    if len(after) < 2:
        return None
    close = after[:2] == b"--"
    first = k = 2 if close else 0
    while k < len(after) and after[k] in (0x20, 0x09):
        k += 1
    if k == first:
        return b"", 0  # no padding
    if k == len(after) or (not close and after[k] == 0x0D and k + 1 == len(after)):
        return None if k < MAX_PADDING else (b"", 0)  # endless "padding": leave it to the parser
    if close:
        return b"--", k  # a close delimiter: what follows its padding is the epilogue
    return (b"", k) if after[k : k + 2] == b"\r\n" else (b"", 0)


# -- writing (responses) ---------------------------------------------------------------------


def new_boundary() -> str:
    """A response boundary: random, so no part's bytes can contain it by chance (RFC 2046 §5.1.1)."""
    return secrets.token_hex(16)


PART_END = b"\r\n"  # the CRLF that ends a part's body: it belongs to the next delimiter (RFC 2046)


class MultipartWriter:
    """The one place a ``multipart/related`` response body is assembled (RFC 2387, RFC 2046 §5.1.1).

    Every multipart response (QIDO-RS and metadata XML, instances, frames, bulk data, rendered
    images) is written by one of these: each part is a delimiter, a Content-Type (and a
    Content-Length where the size is known before the bytes), a blank line, the bytes and a CRLF;
    the body ends with the close delimiter.  A streaming response yields ``head``, the part's
    chunks and ``PART_END`` itself; a small one joins ``part`` results, or calls ``body``.
    """

    def __init__(self, part_type: str, boundary: str | None = None):
        self.part_type = part_type  # the ``type`` parameter: the root part's media type (RFC 2387 §3.1)
        self.boundary = boundary or new_boundary()

    @property
    def media_type(self) -> str:
        """The response's Content-Type."""
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def head(self, content_type: str | None = None, length: int | None = None) -> bytes:
        """A part's delimiter and headers, up to and including the blank line."""
        head = f"--{self.boundary}\r\nContent-Type: {content_type or self.part_type}\r\n"
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        return (head + "\r\n").encode()

    def part(self, data: bytes, content_type: str | None = None, *, length: bool = False) -> bytes:
        """One whole part; ``length`` adds its Content-Length."""
        return self.head(content_type, len(data) if length else None) + data + PART_END

    def end(self) -> bytes:
        """The close delimiter."""
        return f"--{self.boundary}--\r\n".encode()

    def body(self, parts: Iterable[bytes], content_type: str | None = None, *, length: bool = False) -> bytes:
        """A whole body of small parts, all of one type."""
        return b"".join(self.part(data, content_type, length=length) for data in parts) + self.end()

    def size(self, parts: Iterable[tuple[str, int]]) -> int:
        """The length of a body whose parts' types and sizes are known before their bytes."""
        return sum(len(self.head(ctype, n)) + n + len(PART_END) for ctype, n in parts) + len(self.end())
