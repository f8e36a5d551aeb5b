"""Request context: request id, tenant, base URL, and one access-log line per request.

Every request gets an id (the client's ``X-Request-Id`` when it has a safe shape, else a new
one), the base URL the server writes into responses (RetrieveURL, BulkDataURI, Warning,
Link), a metrics sample and one log line naming the route's template, never its UIDs.
After the response, the request is handed to the audit trail the app holds (if any).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server import metrics
from dicomweb_server.errors import CLIENT_CLOSED, CONNECTION_STATUS

# The access log keeps the name it had before the package was split: log queries depend on it.
log = logging.getLogger("dicomweb_server.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what RequestContext accepts from a client
# The key on a response's start message that carries, as data, the study a STOW stored into
# (dicomweb.stow.StoreResponse); popped here for the audit row, never sent.
STUDY_UID = "dicomweb.study_uid"


def base_url(scope: Scope, public: str | None) -> str:
    """The URL clients reach this server at, for the URLs it writes into responses.

    ``DICOMWEB_PUBLIC_BASE_URL`` when set (behind a proxy, set it); otherwise the Host
    header.  Some clients (dicomweb-client) send Host without the port: when Host names
    our own listening address, the socket's port is added so that the URLs resolve.
    """
    if public:
        return public
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1") or "localhost"
    server = scope.get("server")
    scheme = scope.get("scheme", "http")
    if server and ":" not in host and host == server[0] and server[1] not in (None, _DEFAULT_PORT[scheme]):
        host = f"{host}:{server[1]}"
    return f"{scheme}://{host}{scope.get('root_path', '')}".rstrip("/")


_DEFAULT_PORT = {"http": 80, "https": 443}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class RequestContext:
    """Request id, tenant, base URL and one access-log line per request (route template, not the path)."""

    def __init__(self, app: ASGIApp, public_base_url: str | None = None):
        self.app = app
        self.public_base_url = public_base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, base_url=base_url(scope, self.public_base_url))
        started = time.perf_counter()
        app = self.app
        if scope.get("http_version") == "1.1" and b"host" not in headers:
            # RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (and we build URLs from it).
            app = JSONResponse({"status": 400, "message": "An HTTP/1.1 request needs a Host header"}, 400)
        sent: dict[str, Any] = {"status": 500, "bytes": 0, "started": False, "complete": False}
        metrics.api_port((scope.get("server") or (None, None))[1])
        metrics.IN_PROGRESS.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["started"] = message["status"], True
                sent["study_uid"] = message.pop(STUDY_UID, None)  # a StoreResponse's study (dicomweb.stow)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
                sent["complete"] = not message.get("more_body", False)
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client went away, or the connection layer cut a stalled body (it answered 408
            # itself): nobody is left to answer, and this is no server error to report.
            if sent["started"]:
                raise  # a response was under way: it is logged as aborted below
            sent["status"] = state.get(CONNECTION_STATUS, CLIENT_CLOSED)
            sent["complete"] = True
        finally:
            # The route's template ("/dicomweb/studies/{study}"): which transaction, never which UIDs.
            route = getattr(scope.get("route"), "path", None)
            elapsed = time.perf_counter() - started
            metrics.IN_PROGRESS.dec()
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded labels
            metrics.request(method, route or "none", sent["status"], elapsed)
            # A response whose status line went out but whose body never ended was aborted (the
            # connection dropped, by the client or by us): logged as an error, never as a plain 200.
            aborted = not sent["complete"]
            log.log(
                logging.ERROR if aborted else logging.INFO,
                "request aborted" if aborted else "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route or "none",
                    "client_id": state.get("client_id"),
                    "status": sent["status"],
                    "bytes_out": sent["bytes"],
                    "ms": round(elapsed * 1000, 2),
                    **({"aborted": True} if aborted else {}),
                },
            )
            trail = getattr(getattr(scope.get("app"), "state", None), "audit", None)
            if trail is not None:
                study = scope.get("path_params", {}).get("study") or sent.get("study_uid")
                trail.record(state, sent["status"], request_id, study)  # audit.safe_uid: digest unless a UID
