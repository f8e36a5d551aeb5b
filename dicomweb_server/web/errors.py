"""The one mapping from exceptions to responses (DESIGN.md, "Errors in two tiers").

Request-level problems are raised as ``DicomWebError`` (with its status and message) and
answered here as the server's JSON error body; a storage failure is a 503; Starlette's own
404 and 405 get the same body; anything else is a bug, logged by Starlette and answered
with a 500 naming only the request id.  Handlers have no try/except of their own.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb_server.errors import DicomWebError, ServiceUnavailable, StorageError

API_PREFIX = "/api/"
PROBLEM = "application/problem+json"


def answer(
    request: Request,
    status: int,
    message: str,
    headers: dict[str, str],
    fields: dict[str, object] | None = None,
) -> Response:
    """The error body: RFC 9457 ``application/problem+json`` on ``/api`` routes, else the server's
    ``{"status", "message"}`` JSON (the DICOMweb routes' since the first release)."""
    if request.url.path.startswith(API_PREFIX):
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        body = {"type": "about:blank", "title": title, "status": status, "detail": message, **(fields or {})}
        body["instance"] = request.url.path
        return JSONResponse(body, status, headers, media_type=PROBLEM)
    return JSONResponse({"status": status, "message": message}, status, headers)


async def on_error(request: Request, exc: Exception) -> Response:
    """The single mapping from request-level errors to responses."""
    assert isinstance(exc, DicomWebError)
    headers = dict(exc.headers)
    if exc.status == 413 or (exc.status == 429 and request.method == "POST"):
        headers["Connection"] = "close"  # the rest of the body is not read
    return answer(request, exc.status, exc.message, headers, exc.fields)


async def on_storage_error(request: Request, exc: Exception) -> Response:
    return await on_error(request, ServiceUnavailable("object storage unavailable"))


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (method not allowed) as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if "Allow" in headers:  # Starlette joins a set: give it a stable order
        headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
    if exc.status_code == 404:
        path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
        message = f"No resource at {path!r}; the routes are listed at /openapi.json"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
    else:
        message = str(exc.detail)
    return answer(request, exc.status_code, message, headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback by Starlette; the client gets JSON naming only its request id."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    return answer(request, 500, f"internal error (request id {request_id})", {})


EXCEPTION_HANDLERS = {
    DicomWebError: on_error,
    StorageError: on_storage_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
