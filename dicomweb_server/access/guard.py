"""Access: the token endpoint, bearer checks with scopes, per-client rate limits, the audit trail.

Every protected route's handler is wrapped by ``guard``: it verifies the bearer
token (auth.py), checks the route's scope, charges the client's rate limits,
and puts the token's tenant on the request, which every query, object key and
delete is filtered by.  What happened is appended to the audit table (PS3.15
A.5 event types) by a background writer, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from dicomweb_server.access import auth, token_endpoint
from dicomweb_server.access.audit import EVENTS, SECURITY_ALERT, AuditTrail, digest, read_audit
from dicomweb_server.access.ratelimit import Decision, Policy, RateLimiter
from dicomweb_server.access.ratelimit import headers as rate_headers
from dicomweb_server.cache import MISSING, TTLCache
from dicomweb_server.db import access as access_db
from dicomweb_server.db import analysis_jobs
from dicomweb_server.db.access import ClientRecord
from dicomweb_server.db.pool import Pool, connection
from dicomweb_server.errors import DicomWebError, PayloadTooLarge

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]

# The scope each transaction needs (the access issue's table).
SCOPE_OF = {
    "store": "dicomweb.write",
    "search-studies": "dicomweb.read",
    "search-series": "dicomweb.read",
    "search-instances": "dicomweb.read",
    "retrieve": "dicomweb.read",
    "metadata": "dicomweb.read",
    "frames": "dicomweb.read",
    "bulkdata": "dicomweb.read",
    "rendered": "dicomweb.read",
    "thumbnail": "dicomweb.read",
    "delete": "dicomweb.delete",
    "audit": "admin",
    # /api/v1 (the Orders issue): reads, changes, the analysis workers', the change feed.
    "orders-read": "orders.read",
    "orders-write": "orders.write",
    "analysis": "analysis",
    "feed": "orders.read",
}


_REALM = 'Bearer realm="dicomweb"'


class Unauthorized(DicomWebError):
    """401 with an RFC 6750 challenge."""

    status = 401

    def __init__(self, message: str, error: str | None = None):
        challenge = 'Bearer realm="dicomweb"'
        if error:
            challenge += f', error="{error}", error_description="{message}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class InvalidRequest(DicomWebError):
    status = 400

    def __init__(self, message: str):
        super().__init__(
            message,
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request", error_description="{message}"'},
        )


class Forbidden(DicomWebError):
    status = 403

    def __init__(self, scope: str):
        super().__init__(
            f"This token lacks the {scope} scope",
            headers={
                "WWW-Authenticate": f'Bearer realm="dicomweb", error="insufficient_scope", scope="{scope}"'
            },
        )


class TooManyRequests(DicomWebError):
    status = 429

    def __init__(self, decision: Decision):
        super().__init__(
            f"Rate limit exceeded: retry after {decision.reset_seconds} s", headers=rate_headers(decision)
        )


@dataclass
class Access:
    """What the guard needs, built once in the lifespan."""

    keys: auth.SigningKeys
    tokens: auth.TokenSettings
    verifier: auth.Verifier
    limiter: RateLimiter
    default_policy: Policy
    pool: Pool
    _clients: TTLCache[str, ClientRecord | None] = field(default_factory=TTLCache)
    _tenants: TTLCache[str, bool] = field(default_factory=TTLCache)
    _jobs: TTLCache[str, bool] = field(default_factory=TTLCache)

    async def client(self, client_id: str) -> ClientRecord | None:
        """A client record, cached for a few seconds (a disabled client is refused within that)."""
        cached = self._clients.get(client_id, CLIENT_CACHE_SECONDS)
        if cached is not MISSING:
            return cached
        record = await self.find_client(client_id)
        self._clients.put(client_id, record)
        return record

    async def tenant_enabled(self, tenant: str) -> bool:
        """Whether a tenant exists and is enabled, cached like client records."""
        cached = self._tenants.get(tenant, CLIENT_CACHE_SECONDS)
        if cached is not MISSING:
            return cached
        async with connection(self.pool) as conn:
            enabled = await access_db.tenant_enabled(conn, tenant)
        self._tenants.put(tenant, enabled)
        return enabled

    async def job_holds_lease(self, job_id: str) -> bool:
        """Whether a job token's job still holds its lease, cached for JOB_CACHE_SECONDS (a
        worker reading many frames asks the database about once a second, not per frame)."""
        cached = self._jobs.get(job_id, JOB_CACHE_SECONDS)
        if cached is not MISSING:
            return cached
        async with connection(self.pool) as conn:
            live = await analysis_jobs.holds_lease(conn, job_id)
        self._jobs.put(job_id, live)
        return live

    async def find_client(self, client_id: str) -> ClientRecord | None:
        """A client record as the database has it now (the token endpoint checks its secret)."""
        async with connection(self.pool) as conn:
            return await access_db.find_client(conn, client_id)

    def policy(self, client: ClientRecord) -> Policy:
        base = self.default_policy
        return Policy(
            requests=base.requests if client.rate_requests is None else client.rate_requests,
            bytes=base.bytes if client.rate_bytes is None else client.rate_bytes,
            window_seconds=base.window_seconds,
        )


CLIENT_CACHE_SECONDS = 5.0
JOB_CACHE_SECONDS = 1.0
TOKEN_FORM_FIELDS = 20
TOKEN_FORM_FIELD_BYTES = 4096


def bearer_token(request: Request) -> str | None:
    """The token from the one Authorization header; refused in the query (RFC 6750 §2.3 not offered)."""
    if "access_token" in request.query_params:
        raise InvalidRequest("Access tokens are not accepted in the query string")
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("More than one Authorization header")
    if not values:
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header is not a Bearer token", "invalid_token")
    return token.strip()


def guard(handler: Handler, transaction: str) -> Handler:
    """Wrap a protected route's handler: token, scope, rate limit, tenant."""
    scope = SCOPE_OF[transaction]

    async def endpoint(request: Request) -> Response:
        request.state.transaction = transaction
        access: Access = request.app.state.access
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("A bearer token is required")
        try:
            principal = access.verifier.verify(token)
        except auth.InvalidToken as exc:
            raise Unauthorized(f"The access token is not valid ({exc})", "invalid_token") from None
        client = await _client_of(access, principal)
        request.state.client_id = principal.client_id
        request.state.tenant = principal.tenant
        if scope not in principal.scopes:
            raise Forbidden(scope)
        _check_confinement(principal, transaction, request)
        policy = access.policy(client) if client is not None else access.default_policy
        counting = access.limiter.hit_request(principal.client_id, policy)
        if request.method == "GET" and access.limiter.remote:
            response = await _while_counting(handler(request), counting)
        else:
            decision = await counting
            if not decision.allowed:
                raise TooManyRequests(decision)
            if transaction == "store":
                request = await _charge_upload(request, access, principal.client_id, policy)
            response = await handler(request)
            response.headers.update(rate_headers(decision))
        return response

    endpoint.__name__ = getattr(handler, "__name__", transaction)
    return endpoint


async def _client_of(access: Access, principal: auth.Principal) -> ClientRecord | None:
    """The token's client, checked: enabled and of the token's tenant (a job token's client is
    the analysis client, in ANALYSIS_TENANT, and its tenant the order's, which must be enabled)."""
    if principal.external:  # the identity provider's client: its tenant must be ours and enabled
        if not await access.tenant_enabled(principal.tenant):
            raise Unauthorized("The tenant of this token is disabled or unknown", "invalid_token")
        return None
    client = await access.client(principal.client_id)
    home = auth.ANALYSIS_TENANT if principal.studies is not None else principal.tenant
    if client is None or client.disabled or client.tenant != home:
        raise Unauthorized("The client of this token is disabled or unknown", "invalid_token")
    if principal.studies is not None and not await access.tenant_enabled(principal.tenant):
        raise Unauthorized("The tenant of this token is disabled or unknown", "invalid_token")
    if principal.job is not None and not await access.job_holds_lease(principal.job):
        raise Unauthorized("The job of this token no longer holds its lease", "invalid_token")
    return client


# What a job token may do: the DICOMweb reads below /studies/{study} (issue #12 §3).
JOB_TRANSACTIONS = frozenset(
    {
        "retrieve",
        "metadata",
        "frames",
        "bulkdata",
        "rendered",
        "thumbnail",
        "search-series",
        "search-instances",
    }
)


class Confined(DicomWebError):
    status = 403


def _check_confinement(principal: auth.Principal, transaction: str, request: Request) -> None:
    """The ``analysis`` scope only from ANALYSIS_TENANT's own clients; a job token only inside
    its studies; the analysis client's own token nothing but the analysis routes."""
    analysis = SCOPE_OF[transaction] == auth.ANALYSIS_SCOPE
    if principal.studies is not None:
        study = request.path_params.get("study")
        if analysis or transaction not in JOB_TRANSACTIONS or study not in principal.studies:
            raise Confined("A job token reads only the studies of its job")
    elif principal.tenant == auth.ANALYSIS_TENANT and not principal.external:
        if not analysis:
            raise Confined("The analysis client reads studies only with a job's token")
    elif analysis or principal.tenant == auth.ANALYSIS_TENANT:
        raise Confined("The analysis scope is only for the analysis service's clients")


async def _while_counting(handling: Awaitable[Response], counting: Awaitable[Decision]) -> Response:
    """A read runs while a remote limiter (Redis) counts it, so the round trip adds no latency.

    Nothing is sent before the decision: a refused request gets its 429 and the read is
    cancelled (it has no side effects; reads, not writes, go this way).
    """
    work = asyncio.ensure_future(handling)
    try:
        decision = await counting
    except BaseException:
        work.cancel()
        raise
    if not decision.allowed:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        raise TooManyRequests(decision)
    response = await work
    response.headers.update(rate_headers(decision))
    return response


UPLOAD_CHARGE = 8 * 1024 * 1024  # a body of unknown length is charged in steps of this many bytes


async def _charge_upload(request: Request, access: Access, client_id: str, policy: Policy) -> Request:
    """Charge a STOW body against the client's byte budget: all of it up front when its length is
    declared, else as it streams in, so a chunked body cannot escape the budget."""
    length = request.headers.get("content-length")
    if length and length.isdigit():
        if policy.bytes and int(length) > policy.bytes:  # could never fit: no point retrying
            raise PayloadTooLarge(f"The body exceeds this client's upload budget of {policy.bytes} bytes")
        charged = await access.limiter.hit_bytes(client_id, int(length), policy)
        if not charged.allowed:
            raise TooManyRequests(charged)
        return request
    pending = 0
    receive = request.receive

    async def counting() -> Message:
        nonlocal pending
        message = await receive()
        if message["type"] == "http.request":
            pending += len(message.get("body", b""))
            if pending >= UPLOAD_CHARGE or not message.get("more_body", False):
                charged = await access.limiter.hit_bytes(client_id, pending, policy)
                pending = 0
                if not charged.allowed:
                    raise TooManyRequests(charged)
        return message

    return Request(request.scope, counting)


# -- the token endpoint and the discovery documents ----------------------------------------


class _Throttled(Exception):
    def __init__(self, decision: Decision):
        self.decision = decision


async def token(request: Request) -> Response:
    """POST /oauth/token: client credentials only (RFC 6749 §4.4), by authlib.

    Throttled per address, and its failures per (claimed client id, address) and per address
    (ratelimit.py): a wrong secret from one address never locks the client out elsewhere.  Audited
    as User Authentication under the client's tenant when it names a known client, else as a
    Security Alert under no tenant (only the operator sees it)."""
    request.state.transaction = "token"
    access: Access = request.app.state.access
    address = request.client.host if request.client else "unknown"
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "Use application/x-www-form-urlencoded")
    try:  # a token request is a few short fields: a larger form is refused as it streams in
        form = await request.form(max_fields=TOKEN_FORM_FIELDS, max_part_size=TOKEN_FORM_FIELD_BYTES)
    except HTTPException as exc:  # Starlette's form parser: answered in RFC 6749's form
        return _oauth_error(400, "invalid_request", f"The token request form cannot be read: {exc.detail}")
    loop = asyncio.get_running_loop()
    asked: list[str] = []
    known: list[ClientRecord] = []

    def find_client(client_id: str) -> token_endpoint.Client | None:
        asked.append(client_id)
        decision = asyncio.run_coroutine_threadsafe(
            access.limiter.hit_token_attempt(client_id, address), loop
        ).result(30)
        if not decision.allowed:  # attributed from the cache (the audit), not looked up afresh
            cached = asyncio.run_coroutine_threadsafe(access.client(client_id), loop).result(30)
            known.extend([cached] if cached is not None else [])
            raise _Throttled(decision)
        record = asyncio.run_coroutine_threadsafe(access.find_client(client_id), loop).result(30)
        if record is None:
            return None
        known.append(record)
        scopes = auth.allowed_scopes(record.tenant, record.scopes)  # never analysis outside its tenant
        return token_endpoint.Client(
            record.client_id, record.tenant, scopes, record.secret_hashes, record.disabled
        )

    server = token_endpoint.TokenServer(access.keys, access.tokens, find_client)
    pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    try:
        try:
            status, body, headers = await asyncio.to_thread(
                server.respond,
                token_endpoint.TokenRequest(pairs, request.headers),  # case-insensitive, as authlib expects
            )
        finally:
            _who(request, asked, known)
    except _Throttled as exc:
        return _oauth_error(429, "slow_down", "Too many token requests", rate_headers(exc.decision))
    if not asked:  # never got as far as a client id: still counts against the address
        decision = await access.limiter.hit_token_attempt(None, address)
        if not decision.allowed:
            return _oauth_error(429, "slow_down", "Too many token requests", rate_headers(decision))
    elif status == 401:  # the client's credentials were refused: a failure where it came from
        await access.limiter.hit_token_failure(asked, address)
    return JSONResponse(body, status, headers)


def _who(request: Request, asked: list[str], known: list[ClientRecord]) -> None:
    """Who a token request claimed to be, for the audit and the access log: a known client with its
    tenant, or an unknown id in a form that cannot carry what was typed (a pasted secret, say)."""
    if known:
        request.state.client_id = known[-1].client_id
        request.state.tenant = known[-1].tenant
    elif asked:
        request.state.client_id = "unknown:" + digest(asked[-1])


def _oauth_error(status: int, error: str, description: str, extra: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description},
        status,
        {"Cache-Control": "no-store", "Pragma": "no-cache", **(extra or {})},
    )


async def jwks(request: Request) -> Response:
    """GET /.well-known/jwks.json: the public keys tokens are signed with."""
    return JSONResponse(request.app.state.access.keys.public(), headers={"Cache-Control": "max-age=300"})


async def metadata(request: Request) -> Response:
    """GET /.well-known/oauth-authorization-server (RFC 8414)."""
    issuer = request.app.state.access.tokens.issuer
    return JSONResponse(
        {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/oauth/token",
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": list(auth.SCOPES),
            "response_types_supported": [],
        }
    )


# The audit trail lives in audit.py; the app reaches it through here.
__all__ = ["EVENTS", "SECURITY_ALERT", "AuditTrail", "read_audit"]
