"""Wire conventions shared by every ``/api/v1`` route (the Orders issue, "Interfaces"):
JSON bodies read with a size limit, snake_case names, RFC 3339 UTC times, lists as
``{"items": [...], "next_cursor": ...}`` with opaque keyset cursors, and errors as RFC 9457
problems (web/errors.py answers every ``DicomWebError`` raised here so on ``/api``)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

API = "/api/v1"
MAX_BODY = 64 * 1024  # a JSON request body on /api/v1 (reports arrive as multipart, not here)
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class JSONAnswer(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # Every time through rfc3339 (orjson's own datetime output is "+00:00", not "Z").
        return orjson.dumps(content, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def rfc3339(at: datetime | None) -> str | None:
    """An RFC 3339 time in UTC with a ``Z`` (what every /api/v1 time looks like)."""
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its zone, as UTC.  Converted here, so a time whose UTC value is
    outside years 1 to 9999 (``0001-01-01T00:00:00+14:00``) is a 400, not an overflow later."""
    if value is None or value == "":
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an RFC 3339 time, e.g. 2026-12-04T10:00:00Z") from None
    if at.tzinfo is None:
        raise BadRequest(f"{name} must carry a time zone (Z or +hh:mm)")
    try:
        return at.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadRequest(f"{name} is outside the years 1 to 9999 in UTC") from None


def no_nul(value: Any, where: str = "The body") -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: a string with one is refused here (400)
    rather than failing in the database (a 500).  Walks the parsed JSON without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequest(f"{where} holds U+0000 (NUL), which no text may contain")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def query(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each at most once: an unknown or repeated one is a 400 (which of
    two ``limit`` values was meant cannot be guessed), and so is one holding U+0000."""
    items = request.query_params.multi_items()
    names = [name for name, _ in items]
    unknown = set(names) - allowed
    if unknown:
        raise BadRequest(f"Unknown query parameter(s): {', '.join(sorted(unknown))}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadRequest(f"Query parameter(s) given more than once: {', '.join(repeated)}")
    values = dict(items)
    no_nul(list(values.values()), "A query parameter")
    return values


async def json_body(request: Request, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}`` unless ``required``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"A JSON body on {API} is at most {MAX_BODY} bytes")
    if not body.strip():
        if required:
            raise BadRequest("A JSON object is required in the body")
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType("The body must be application/json")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object")
    no_nul(value)
    return value


def limit_of(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def encode_cursor(*values: Any) -> str:
    """An opaque keyset cursor (the sort key of the last item handed out)."""
    return base64.urlsafe_b64encode(orjson.dumps(values, default=_default)).decode().rstrip("=")


def decode_cursor(raw: str | None, arity: int) -> list[Any] | None:
    if raw is None or raw == "":
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadRequest("cursor is not one this server handed out") from None
    if not isinstance(values, list) or len(values) != arity:
        raise BadRequest("cursor is not one this server handed out")
    return values


def page(items: list[Any], next_cursor: str | None) -> JSONAnswer:
    return JSONAnswer({"items": items, "next_cursor": next_cursor})


def actor(request: Request) -> str:
    """Who did it, for an order's history: the authenticated client."""
    return f"client:{getattr(request.state, 'client_id', 'unknown')}"
