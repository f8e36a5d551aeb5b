"""The OAuth2 token endpoint (RFC 6749 §4.4, client credentials), on authlib.

authlib parses the request, authenticates the client (``client_secret_basic`` or
``client_secret_post``), checks the grant and the scopes, and writes RFC 6749 errors; auth.py
signs the token.  Nothing here touches the network or the database: ``TokenServer`` asks its
caller for a client record.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import OAuth2Payload, OAuth2Request

from dicomweb_server.access.auth import (
    SCOPES,
    SigningKeys,
    TokenSettings,
    hash_secret,
    issue,
    new_secret,
    secret_matches,
)


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client as the token endpoint needs it."""

    client_id: str
    tenant: str
    scopes: frozenset[str]
    secret_hashes: tuple[str, ...] = field(repr=False)
    disabled: bool = False

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """What is asked for and allowed; everything allowed when nothing is asked (RFC 6749 §3.3)."""
        asked = set((scope or "").split()) or set(self.scopes)
        return " ".join(sorted(asked & self.scopes))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        matched = secret_matches(client_secret, self.secret_hashes)  # the same work whatever the client
        return matched and not self.disabled

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials" and not self.disabled


@functools.cache
def _unknown_hash() -> str:
    return hash_secret(new_secret())


_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §3.3, and not too long


def _named(scopes: Iterable[str]) -> str:
    """Scopes for an error_description (RFC 6749 §5.2 allows printable ASCII but '"' and '\\')."""
    shown = sorted(s for s in set(scopes) if _SCOPE_TOKEN.fullmatch(s))[:10]
    return " ".join(shown) if shown else "(malformed)"


class _Grant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        """authlib's checks, then: asking only for scopes this client lacks is ``invalid_scope``
        (a token with an empty scope helps no one); asking for some it has narrows to those."""
        super().validate_token_request()
        client: Client = self.request.client
        asked = set((self.request.payload.scope or "").split())
        if asked and not asked & client.scopes:
            raise InvalidScopeError(
                description=f"This client is not allowed the scope(s) asked for: {_named(asked)}"
            )


_ACCEPTED = "The client credentials were not accepted"
_NO_CREDENTIALS = (
    "No client credentials: send them with HTTP Basic, or client_id and client_secret in the form"
)


class _CredentialsRefused(InvalidClientError):  # type: ignore[misc]
    """401 invalid_client (RFC 6749 §5.2) with a Basic challenge, in our words."""

    status_code = 401

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = list(OAuth2Error.get_headers(self))
        headers.append(("WWW-Authenticate", 'Basic realm="token", charset="UTF-8"'))
        return headers


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: list[tuple[str, str]]):
        self._datalist: dict[str, list[str]] = {}
        for key, value in form:
            self._datalist.setdefault(key, []).append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):  # type: ignore[misc]
    """A token request: parameters come from the form body only, never the query (RFC 6749 §3.2)."""

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]

    @property
    def args(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class TokenRequest:
    """What the edge hands the token endpoint: the parsed form and the headers."""

    form: list[tuple[str, str]]
    headers: Mapping[str, str]  # looked up case-insensitively by authlib ("Authorization")


class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server, for the client credentials grant only.

    ``find_client`` is called (from the thread authlib runs in) with a client id and
    returns the registered client or None.
    """

    def __init__(
        self, keys: SigningKeys, cfg: TokenSettings, find_client: Callable[[str], Client | None]
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.keys = keys
        self.cfg = cfg
        self.find_client = find_client
        self.register_grant(_Grant)
        self.register_token_generator("client_credentials", self._token)

    def query_client(self, client_id: str) -> Client:
        """The client, or a stand-in that fails the same way at the same cost: an unknown id and a
        wrong secret are indistinguishable (no probing for client ids)."""
        return self.find_client(client_id) or Client(
            client_id, "", frozenset(), (_unknown_hash(),), disabled=True
        )

    def validate_requested_scope(self, scope: str | None) -> None:
        unknown = set((scope or "").split()) - set(SCOPES)
        if unknown:
            raise InvalidScopeError(
                description=f"Unknown scope(s): {_named(unknown)}; known: {' '.join(SCOPES)}"
            )

    def authenticate_client(
        self, request: OAuth2Request, methods: list[str], endpoint: str = "token"
    ) -> Client:
        """authlib's client authentication, its failure worded for people: an unknown client id and
        a wrong secret get the same answer (no probing for client ids)."""
        try:
            return super().authenticate_client(request, methods, endpoint)  # type: ignore[no-any-return]
        except (InvalidClientError, UnicodeError):  # UnicodeError: Basic credentials not UTF-8
            sent = "authorization" in request.headers or (
                request.form.get("client_id") and request.form.get("client_secret")
            )
            raise _CredentialsRefused(description=_ACCEPTED if sent else _NO_CREDENTIALS) from None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        pass  # self-contained JWTs: nothing to store (the edge audits the issue)

    def create_oauth2_request(self, request: TokenRequest) -> OAuth2Request:
        # TLS terminates at the proxy in front of us (README): the URI is only checked for it.
        req = _Request("POST", "https://token", headers=request.headers)
        req.payload = _Payload(request.form)
        return req

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, Any, dict[str, str]]:
        return status, body, dict(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def _token(
        self,
        grant_type: str,
        client: Client,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        granted = client.get_allowed_scope(scope)
        token = issue(self.keys, self.cfg, client.client_id, client.tenant, granted.split())
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.cfg.lifetime,
            "scope": granted,
        }

    def respond(self, request: TokenRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Run the token endpoint: (status, JSON body, headers)."""
        status, body, headers = self.create_token_response(request)
        headers = {**headers, "Cache-Control": "no-store", "Pragma": "no-cache"}
        return status, body, headers
