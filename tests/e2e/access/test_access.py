"""Access over ASGI: the token endpoint, bearer checks on every route, scopes, tenant isolation,
rate limits, the audit trail and the rule that logs carry no PHI or credentials.

RELIABILITY.md, "Security rules" and "Audit and PHI".  None of these tests may be skipped.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import argon2
import asyncpg
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.access import auth
from dicomweb_server.access import guard as access
from dicomweb_server.db import access as index
from dicomweb_server.db.pool import connection
from dicomweb_server.logs import JsonFormatter
from dicomweb_server.routes import API, ROUTES, WORKFLOW
from tests.conftest import (
    ANALYSIS_CLIENT,
    ASGI_ISSUER,
    CLIENT,
    KEYS,
    OTHER_CLIENT,
    OTHER_TENANT,
    TENANT,
    App,
    bearer,
    make_settings,
    running_app,
    token_for,
)
from tests.support.dicomfiles import content_type, instance, multipart, split_multipart

TOKEN = "/oauth/token"
STUDIES = "/dicomweb/studies"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ACCEPT = {
    "retrieve": DICOM_ANY,
    "frames": OCTETS_ANY,
    "bulkdata": OCTETS_ANY,
    "rendered": "image/png",
    "thumbnail": "image/png",
    "metadata": "application/dicom+json",
}
OPEN = {
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/dicomweb", "OPTIONS"),
    ("/oauth/token", "POST"),
    ("/.well-known/jwks.json", "GET"),
    ("/.well-known/oauth-authorization-server", "GET"),
    ("/", "GET"),  # the service document, the OpenAPI document and the API page
    ("/dicomweb", "GET"),
    ("/openapi.json", "GET"),
    ("/docs", "GET"),
}
# Every guarded (path template, method, transaction): the API table plus the audit reader.
PROTECTED = [(path, method, tx) for path, methods, _, tx in (*API, *WORKFLOW) for method in methods] + [
    ("/admin/audit", "GET", "audit")
]
# A cheap argon2id hash for tests that exercise the endpoint's logic rather than the hash cost
# (the stored hash carries its own parameters; the server verifies whatever it is given).
T = TypeVar("T")
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


# -- helpers ------------------------------------------------------------------------------------


def anonymous(app: App) -> httpx.AsyncClient:
    """A client on the same app without the default bearer token."""
    return httpx.AsyncClient(transport=app.client._transport, base_url="http://testserver")


def other_headers(scopes: tuple[str, ...] = auth.SCOPES) -> dict[str, str]:
    return bearer(token_for(client_id=OTHER_CLIENT, tenant=OTHER_TENANT, scopes=scopes))


async def new_client(
    pool: asyncpg.Pool,
    scopes: Iterable[str] = ("dicomweb.read",),
    tenant: str = TENANT,
    secret: str | None = None,
    cheap: bool = False,
) -> tuple[str, str]:
    client_id = f"t-{uuid.uuid4().hex[:16]}"
    secret = secret or auth.new_secret()
    hashed = CHEAP.hash(secret) if cheap else auth.hash_secret(secret)
    async with connection(pool) as conn:
        await index.create_client(conn, client_id, tenant, client_id, scopes, hashed)
    return client_id, secret


async def _in(pool: asyncpg.Pool, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(conn, *args)`` on a connection of ``pool`` (the db functions take a connection)."""
    async with connection(pool) as conn:
        return await fn(conn, *args)


async def token_basic(client: httpx.AsyncClient, client_id: str, secret: str, **form: str) -> httpx.Response:
    return await client.post(
        TOKEN, data={"grant_type": "client_credentials", **form}, auth=(client_id, secret)
    )


async def token_post(client: httpx.AsyncClient, client_id: str, secret: str, **form: str) -> httpx.Response:
    return await client.post(
        TOKEN,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, **form},
    )


def jose_header(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


def jose_claims(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def concrete(path: str, study: str, series: str, sop: str) -> str:
    """A path template with UIDs (and frame 1, Pixel Data's bulk data) filled in."""
    return (
        path.replace("{study}", study)
        .replace("{series}", series)
        .replace("{instance}", sop)
        .replace("{frames}", "1")
        .replace("{path:path}", "7FE00010")
    )


def random_uids() -> tuple[str, str, str]:
    return generate_uid(), generate_uid(), generate_uid()


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> httpx.Response:
    if method == "POST":
        extra = [("Content-Type", content_type())]
        hdrs = extra + (list(headers.items()) if isinstance(headers, dict) else list(headers or []))
        return await client.request(method, url, content=b"", headers=hdrs)
    return await client.request(method, url, headers=headers)


async def store(client: httpx.AsyncClient, files: list[bytes], headers: dict[str, str] | None = None) -> None:
    r = await client.post(
        STUDIES, content=multipart(files), headers={"Content-Type": content_type(), **(headers or {})}
    )
    assert r.status_code == 200, r.text


def pixels(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


# -- the token endpoint -------------------------------------------------------------------------


async def test_token_endpoint_basic_and_post_issue_rfc9068_tokens(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, ("dicomweb.read", "dicomweb.write"))
    async with anonymous(app) as anon:
        for r in (await token_basic(anon, client_id, secret), await token_post(anon, client_id, secret)):
            assert r.status_code == 200, r.text
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["pragma"] == "no-cache"
            body = r.json()
            assert body["token_type"].lower() == "bearer"
            assert body["expires_in"] == 3600
            assert body["scope"] == "dicomweb.read dicomweb.write"
            assert "refresh_token" not in body  # client credentials: never a refresh token
            token = body["access_token"]
            principal = app.state.access.verifier.verify(token)
            assert principal.client_id == client_id
            assert principal.tenant == TENANT
            assert principal.scopes == {"dicomweb.read", "dicomweb.write"}
            head, claims = jose_header(token), jose_claims(token)
            assert head["typ"] == "at+jwt"
            assert head["alg"] == "ES256"
            assert head["kid"] in {k["kid"] for k in KEYS.public()["keys"]}
            assert claims["iss"] == "http://testserver"
            assert claims["aud"] == "http://testserver/dicomweb"
            assert claims["client_id"] == client_id
            assert claims["tenant"] == TENANT
            assert claims["scope"] == "dicomweb.read dicomweb.write"
            assert claims["jti"]
            assert claims["exp"] - claims["iat"] == 3600
            # ... and it opens a protected route.
            search = await anon.get(STUDIES, headers=bearer(token))
            assert search.status_code == 200, search.text


async def test_token_scopes_are_the_intersection_of_asked_and_allowed(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, ("dicomweb.read",), cheap=True)
    async with anonymous(app) as anon:
        r = await token_basic(anon, client_id, secret, scope="dicomweb.read admin")
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "dicomweb.read"
        assert jose_claims(r.json()["access_token"])["scope"] == "dicomweb.read"
        r = await token_basic(anon, client_id, secret, scope="dicomweb.everything")
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_scope"


async def test_token_client_authentication_failures(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    answers: dict[str, tuple[int, Any]] = {}
    async with anonymous(app) as anon:
        for ask in (token_basic, token_post):
            wrong = await ask(anon, client_id, secret + "x")
            unknown = await ask(anon, f"nobody-{uuid.uuid4().hex[:8]}", secret)
            answers[f"{ask.__name__} wrong secret"] = (wrong.status_code, wrong.json())
            answers[f"{ask.__name__} unknown client"] = (unknown.status_code, unknown.json())
    for case, (status, body) in answers.items():
        assert (status, body["error"]) == (401, "invalid_client"), (case, body)
        assert "access_token" not in body
    # An unknown client answers exactly like a wrong secret: client ids cannot be enumerated.
    assert len({json.dumps(body, sort_keys=True) for _, body in answers.values()}) == 1, answers


async def test_token_grant_and_body_format_errors(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        r = await anon.post(
            TOKEN,
            data={"grant_type": "password", "username": "u", "password": "p"},
            auth=(client_id, secret),
        )
        assert r.status_code == 400
        assert r.json()["error"] == "unsupported_grant_type"
        r = await anon.post(TOKEN, json={"grant_type": "client_credentials"}, auth=(client_id, secret))
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"
        assert r.headers["cache-control"] == "no-store"
        r = await anon.post(TOKEN, data={}, auth=(client_id, secret))
        assert r.status_code == 400
        # Credentials in the query string are not read (RFC 6749 §3.2: the body only).
        r = await anon.post(
            TOKEN,
            params={"client_id": client_id, "client_secret": secret},
            data={"grant_type": "client_credentials"},
        )
        assert r.status_code in (400, 401)
        assert "access_token" not in r.json()


async def test_disabled_client_gets_no_token_and_its_tokens_stop_working(
    app: App, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "CLIENT_CACHE_SECONDS", 0)
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        r = await token_basic(anon, client_id, secret)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert (await anon.get(STUDIES, headers=bearer(token))).status_code == 200
        assert await _in(db, index.set_client_disabled, client_id, True)
        r = await token_basic(anon, client_id, secret)
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"
        r = await anon.get(STUDIES, headers=bearer(token))
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert await _in(db, index.set_client_disabled, client_id, False)
        assert (await anon.get(STUDIES, headers=bearer(token))).status_code == 200


async def test_disabled_tenant_disables_its_clients(
    app: App, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "CLIENT_CACHE_SECONDS", 0)
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    assert await _in(db, index.create_tenant, tenant, tenant)
    client_id, secret = await new_client(db, tenant=tenant, cheap=True)
    async with anonymous(app) as anon:
        r = await token_basic(anon, client_id, secret)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        await db.execute("UPDATE tenant SET disabled = true WHERE id = $1", tenant)
        assert (await token_basic(anon, client_id, secret)).status_code == 401
        assert (await anon.get(STUDIES, headers=bearer(token))).status_code == 401


async def test_rotated_secret_overlaps_then_only_the_new_one_works(app: App, db: asyncpg.Pool) -> None:
    client_id, first = await new_client(db, cheap=True)
    second, third = auth.new_secret(), auth.new_secret()
    async with anonymous(app) as anon:
        assert await _in(db, index.rotate_secret, client_id, CHEAP.hash(second), 3600)
        assert (await token_basic(anon, client_id, first)).status_code == 200  # the overlap
        assert (await token_post(anon, client_id, second)).status_code == 200
        assert await _in(db, index.rotate_secret, client_id, CHEAP.hash(third), 0)
        assert (await token_basic(anon, client_id, third)).status_code == 200
        assert (await token_basic(anon, client_id, second)).status_code == 401
        assert (await token_basic(anon, client_id, first)).status_code == 401
    assert not await _in(db, index.rotate_secret, "no-such-client", CHEAP.hash(third), 0)


async def test_token_endpoint_throttles_guessing_for_one_client_id(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        statuses = [(await token_basic(anon, client_id, f"guess-{i}")).status_code for i in range(21)]
        assert statuses[:20] == [401] * 20
        assert statuses[20] == 429
        r = await token_basic(anon, client_id, secret)  # the right secret, within the window
        assert r.status_code == 429
        assert r.json()["error"] == "slow_down"
        assert "access_token" not in r.json()
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["cache-control"] == "no-store"
        # Another client id is not throttled by this one's guesses.
        other_id, other_secret = await new_client(db, cheap=True)
        assert (await token_post(anon, other_id, other_secret)).status_code == 200


# -- discovery and open routes ------------------------------------------------------------------


async def test_jwks_publishes_public_keys_only(app: App) -> None:
    async with anonymous(app) as anon:
        r = await anon.get("/.well-known/jwks.json")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "EC"
        assert key["crv"] == "P-256"
        assert key["kid"]
        assert "d" not in key
        assert not {"p", "q", "dp", "dq", "qi", "k"} & set(key)
    assert {k["kid"] for k in keys} == {k["kid"] for k in KEYS.public()["keys"]}
    assert '"d"' not in r.text


async def test_authorization_server_metadata(app: App) -> None:
    async with anonymous(app) as anon:
        r = await anon.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    meta = r.json()
    assert meta["issuer"] == ASGI_ISSUER
    assert meta["token_endpoint"] == ASGI_ISSUER + TOKEN
    assert meta["jwks_uri"] == ASGI_ISSUER + "/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    assert meta["scopes_supported"] == list(auth.SCOPES)
    assert "none" not in meta["token_endpoint_auth_methods_supported"]


async def test_health_capabilities_and_discovery_need_no_token(app: App) -> None:
    async with anonymous(app) as anon:
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/readyz")).status_code == 200
        r = await anon.options("/dicomweb", headers={"Accept": "application/json"})
        assert r.status_code == 200
        assert (await anon.get("/.well-known/jwks.json")).status_code == 200
        assert (await anon.get("/.well-known/oauth-authorization-server")).status_code == 200


# -- bearer checks on every protected route -----------------------------------------------------


def test_every_route_is_either_open_or_guarded() -> None:
    """A new route cannot slip in unguarded: each is in the open list or in PROTECTED."""
    served = {
        (route.path, method)
        for route in ROUTES
        for method in getattr(route, "methods", None) or ()  # the Mount of /docs/static has none
        if method != "HEAD"
    }
    guarded = {(path, method) for path, method, _ in PROTECTED}
    assert served == OPEN | guarded
    assert not OPEN & guarded
    assert {tx for _, _, tx in PROTECTED} == set(access.SCOPE_OF)


async def test_every_protected_route_refuses_a_missing_or_invalid_token(app: App) -> None:
    uids = random_uids()
    invalid = [
        "not-a-token",
        token_for(issuer="http://elsewhere.test"),  # signed by our key, another audience
        token_for().rsplit(".", 1)[0] + ".AAAA",  # a broken signature
        token_for(client_id="no-such-client"),  # a client we never registered
        token_for(client_id=CLIENT, tenant=OTHER_TENANT),  # a tenant that is not the client's
    ]
    problems: list[str] = []
    async with anonymous(app) as anon:
        for path, method, _ in PROTECTED:
            url = concrete(path, *uids)
            r = await call(anon, method, url)
            challenge = r.headers.get("www-authenticate", "")
            if r.status_code != 401 or not challenge.startswith("Bearer"):
                problems.append(f"no token: {method} {path} -> {r.status_code} {challenge!r}")
            if "error=" in challenge:
                problems.append(f"no token: {method} {path} has an error code: {challenge!r}")
            for token in invalid:
                r = await call(anon, method, url, bearer(token))
                challenge = r.headers.get("www-authenticate", "")
                if (
                    r.status_code != 401
                    or not challenge.startswith("Bearer")
                    or ('error="invalid_token"' not in challenge)
                ):
                    problems.append(f"bad token: {method} {path} -> {r.status_code} {challenge!r}")
            r = await call(anon, method, url, {"Authorization": "Basic dXNlcjpwYXNz"})
            if r.status_code != 401:
                problems.append(f"basic scheme: {method} {path} -> {r.status_code}")
    assert problems == []


async def test_every_protected_route_refuses_tokens_in_the_query_and_two_authorization_headers(
    app: App,
) -> None:
    uids = random_uids()
    token = token_for()
    problems: list[str] = []
    async with anonymous(app) as anon:
        for path, method, _ in PROTECTED:
            url = concrete(path, *uids)
            r = await call(anon, method, f"{url}?access_token={token}")
            if r.status_code != 400:
                problems.append(f"query token: {method} {path} -> {r.status_code}")
            # ... even alongside a valid header.
            r = await call(anon, method, f"{url}?access_token={token}", bearer(token))
            if r.status_code != 400:
                problems.append(f"query token + header: {method} {path} -> {r.status_code}")
            two = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
            r = await call(anon, method, url, two)
            if r.status_code != 400:
                problems.append(f"two headers: {method} {path} -> {r.status_code}")
    assert problems == []


def _token(transaction: str, scopes: tuple[str, ...]) -> str:
    """The analysis routes' callers are the analysis service's clients (their own tenant)."""
    if access.SCOPE_OF[transaction] == auth.ANALYSIS_SCOPE:
        return token_for(client_id=ANALYSIS_CLIENT, tenant=auth.ANALYSIS_TENANT, scopes=scopes)
    return token_for(scopes=scopes)


async def test_scope_matrix_covers_every_route_and_every_scope(app: App) -> None:
    """403 insufficient_scope exactly when the route's scope is missing; never 401/403 otherwise."""
    uids = random_uids()
    scope_sets: list[tuple[str, ...]] = [(s,) for s in auth.SCOPES] + [()]
    covered: set[tuple[str, str]] = set()
    problems: list[str] = []
    async with anonymous(app) as anon:
        for path, method, tx in PROTECTED:
            needed = access.SCOPE_OF[tx]
            url = concrete(path, *uids)
            for scopes in scope_sets:
                r = await call(anon, method, url, bearer(_token(tx, scopes)))
                label = f"{method} {path} with {scopes or 'no scope'}"
                if needed in scopes:
                    if r.status_code in (401, 403) or r.status_code >= 500:
                        problems.append(f"{label}: refused {r.status_code} {r.text[:80]}")
                else:
                    challenge = r.headers.get("www-authenticate", "")
                    if (
                        r.status_code != 403
                        or 'error="insufficient_scope"' not in challenge
                        or f'scope="{needed}"' not in challenge
                    ):
                        problems.append(f"{label}: {r.status_code} {challenge!r}, expected 403")
            covered.add((path, method))
    assert problems == []
    assert covered == {(path, method) for path, method, _ in PROTECTED}
    assert len(covered) == len(API) + len(WORKFLOW) + 1


# -- tenant isolation (OWASP API1, BOLA) --------------------------------------------------------


def fingerprint(r: httpx.Response) -> Any:
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("multipart/"):
        return ("multipart", tuple(sorted(body for _, body in split_multipart(r.content, ctype))))
    if "json" in ctype:
        return ("json", r.json())
    return ("bytes", r.content)


def get_routes() -> list[tuple[str, str]]:
    return [(path, tx) for path, methods, _, tx in API if "GET" in methods]


async def snapshot(
    client: httpx.AsyncClient, uids: tuple[str, str, str], headers: dict[str, str] | None = None
) -> dict[str, httpx.Response]:
    out = {}
    for path, tx in get_routes():
        out[path] = await client.get(
            concrete(path, *uids),
            headers={"Accept": ACCEPT.get(tx, "application/dicom+json"), **(headers or {})},
        )
    return out


def disk(app: App) -> dict[str, list[Path]]:
    root = app.settings.storage.path
    found: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.is_file() and ".staging" not in p.parts:
            found.setdefault(p.relative_to(root).parts[0], []).append(p)
    return found


async def test_two_tenants_with_the_same_uids_see_only_their_own_data(app: App) -> None:
    uids = random_uids()
    study, series, sop = uids
    mine = instance(study, series, sop, seed=1, patient="Tenant^A", modality="CT", SeriesNumber=1)
    theirs = instance(
        study, series, sop, seed=2, patient="Tenant^B", modality="MR", SeriesNumber=2, InstanceNumber=2
    )
    b = other_headers()
    await store(app.client, [mine])
    a_before = await snapshot(app.client, uids)
    for path, r in a_before.items():
        assert r.status_code == 200, (path, r.status_code, r.text[:200])

    # Before B stores anything: A's study is, for B, exactly an absent one.
    unknown = random_uids()
    b_sees = await snapshot(app.client, uids, b)
    b_absent = await snapshot(app.client, unknown, b)
    for path, tx in get_routes():
        seen, absent = b_sees[path], b_absent[path]
        assert (seen.status_code, seen.content) == (absent.status_code, absent.content), path
        assert seen.headers.get("content-type") == absent.headers.get("content-type"), path
        if tx.startswith("search-"):
            assert seen.status_code == 200 and seen.json() == [], path
        else:
            assert seen.status_code == 404, path
    r = await app.client.get(STUDIES, params={"StudyInstanceUID": study}, headers=b)
    assert r.json() == []
    for level in (
        f"{STUDIES}/{study}",
        f"{STUDIES}/{study}/series/{series}",
        concrete("/dicomweb/studies/{study}/series/{series}/instances/{instance}", *uids),
    ):
        gone = await app.client.delete(level, headers=b)
        absent = await app.client.delete(level.replace(study, unknown[0]), headers=b)
        assert gone.status_code == 404
        assert (gone.status_code, gone.content) == (absent.status_code, absent.content)
    a_still = await snapshot(app.client, uids)
    for path in a_before:
        assert fingerprint(a_still[path]) == fingerprint(a_before[path]), path

    # B stores the same UIDs with other bytes: no conflict, and each sees its own.
    r = await app.client.post(
        f"{STUDIES}/{study}", content=multipart([theirs]), headers={"Content-Type": content_type(), **b}
    )
    assert r.status_code == 200, r.text
    a_after = await snapshot(app.client, uids)
    b_after = await snapshot(app.client, uids, b)
    for path, tx in get_routes():
        assert a_after[path].status_code == 200, path
        assert b_after[path].status_code == 200, path
        assert fingerprint(a_after[path]) == fingerprint(a_before[path]), path
        assert fingerprint(b_after[path]) != fingerprint(a_before[path]), path
        if tx in ("retrieve", "frames", "bulkdata"):
            assert pixels(mine) in a_after[path].content and pixels(theirs) not in a_after[path].content
            assert pixels(theirs) in b_after[path].content and pixels(mine) not in b_after[path].content
    studies_b = (await app.client.get(STUDIES, headers=b)).json()
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in studies_b] == ["Tenant^B"]
    studies_a = (await app.client.get(STUDIES)).json()
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in studies_a] == ["Tenant^A"]

    # Object keys begin with the tenant id; each tenant's object holds its own bytes.
    objects = disk(app)
    assert set(objects) == {TENANT, OTHER_TENANT}
    assert [pixels(mine) in p.read_bytes() for p in objects[TENANT]] == [True]
    assert [pixels(theirs) in p.read_bytes() for p in objects[OTHER_TENANT]] == [True]

    # B deletes its copy: A's is untouched.
    assert (await app.client.delete(f"{STUDIES}/{study}", headers=b)).status_code == 204
    a_last = await snapshot(app.client, uids)
    for path in a_before:
        assert fingerprint(a_last[path]) == fingerprint(a_before[path]), path
    b_last = await snapshot(app.client, uids, b)
    for path, tx in get_routes():
        if not tx.startswith("search-"):
            assert b_last[path].status_code == 404, path


# -- rate limits --------------------------------------------------------------------------------


@pytest.fixture
async def limited(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = make_settings(
        database_url, tmp_path / "objects", access=dict(rate_requests=5, rate_window_seconds=60)
    )
    async with running_app(settings) as a:
        yield a


async def test_request_budget_per_client(limited: App) -> None:
    for _ in range(5):
        r = await limited.client.get(STUDIES)
        assert r.status_code == 200, r.text
        assert '"requests";q=5;w=60' in r.headers["ratelimit-policy"]
        assert re.search(r'"requests";r=\d+;t=\d+', r.headers["ratelimit"])
        assert "retry-after" not in r.headers
    r = await limited.client.get(STUDIES)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert '"requests";r=0' in r.headers["ratelimit"]
    assert "ratelimit-policy" in r.headers
    # Another token (another jti) of the same client shares the budget ...
    fresh = token_for()
    assert jose_claims(fresh)["jti"] != jose_claims(limited.client.headers["authorization"][7:])["jti"]
    assert (await limited.client.get(STUDIES, headers=bearer(fresh))).status_code == 429
    # ... a forged X-Forwarded-For does not buy a new one ...
    for spoof in ("203.0.113.9", "198.51.100.1, 10.0.0.1"):
        r = await limited.client.get(STUDIES, headers={"X-Forwarded-For": spoof, "X-Real-IP": spoof})
        assert r.status_code == 429
    # ... and another client is unaffected.
    r = await limited.client.get(STUDIES, headers=other_headers())
    assert r.status_code == 200


SMALL = len(multipart([instance(size=16)]))
BYTE_BUDGET = SMALL * 3 // 2


@pytest.fixture
async def byte_limited(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = make_settings(
        database_url, tmp_path / "objects", access=dict(rate_bytes=BYTE_BUDGET, rate_window_seconds=60)
    )
    async with running_app(settings) as a:
        yield a


async def test_byte_budget_refuses_a_stow_over_the_remaining_bytes(byte_limited: App) -> None:
    body = multipart([instance(size=16)])
    assert len(body) <= BYTE_BUDGET < 2 * len(body)  # UIDs vary in length: sizes differ by a few bytes
    r = await byte_limited.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    body = multipart([instance(size=16)])
    r = await byte_limited.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert '"bytes"' in r.headers["ratelimit"]
    assert f'"bytes";q={BYTE_BUDGET}' in r.headers["ratelimit-policy"]
    # Reads are not charged bytes.
    assert (await byte_limited.client.get(STUDIES)).status_code == 200


async def test_a_stow_larger_than_the_whole_byte_budget_is_413_not_429(byte_limited: App) -> None:
    """It can never fit: 429 with Retry-After would have the client retry forever
    (ratelimit.hit_bytes: "the caller should answer 413 rather than 429 for it")."""
    body = multipart([instance(size=64)])
    assert len(body) > BYTE_BUDGET
    r = await byte_limited.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 413, (r.status_code, r.text)


async def test_chunked_stows_cannot_escape_the_byte_budget(byte_limited: App) -> None:
    """A body without Content-Length is charged after the fact; the budget must still hold."""

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for at in range(0, len(body), 500):
            yield body[at : at + 500]

    statuses = []
    for _ in range(4):
        body = multipart([instance(size=16)])
        r = await byte_limited.client.post(
            STUDIES, content=chunked(body), headers={"Content-Type": content_type()}
        )
        statuses.append(r.status_code)
    # 4 bodies of 2/3 of the budget each: at least the last ones are over it.
    assert 429 in statuses, statuses


# -- the audit trail ----------------------------------------------------------------------------


async def audit_rows(
    client: httpx.AsyncClient, after: int, wanted: Iterable[str], headers: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The caller's tenant's rows after ``after`` by request id, waiting (2 s) for ``wanted``."""
    wanted = set(wanted)
    deadline = time.monotonic() + 2
    while True:
        r = await client.get("/admin/audit", params={"after": after, "limit": 1000}, headers=headers)
        assert r.status_code == 200, r.text
        rows = {row["request_id"]: row for row in r.json()}
        if wanted <= set(rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_audit_trail_records_each_transaction(app: App, db: asyncpg.Pool) -> None:
    after = await db.fetchval("SELECT coalesce(max(pk), 0) FROM audit")
    study, series, sop = random_uids()
    ids: dict[str, str] = {}
    r = await app.client.post(
        STUDIES, content=multipart([instance(study, series, sop)]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200
    ids["store"] = r.headers["x-request-id"]
    r = await app.client.get(STUDIES, params={"StudyInstanceUID": study})
    assert r.status_code == 200
    ids["query"] = r.headers["x-request-id"]
    r = await app.client.get(f"{STUDIES}/{study}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    ids["retrieve"] = r.headers["x-request-id"]
    r = await app.client.get(f"{STUDIES}/{study}", headers=bearer(token_for(scopes=("dicomweb.write",))))
    assert r.status_code == 403
    ids["forbidden"] = r.headers["x-request-id"]
    async with anonymous(app) as anon:
        r = await anon.get(f"{STUDIES}/{study}")
        assert r.status_code == 401
        ids["no-token"] = r.headers["x-request-id"]
        r = await anon.get(f"{STUDIES}/{study}", headers=bearer("bad.token.here"))
        assert r.status_code == 401
        ids["bad-token"] = r.headers["x-request-id"]
    r = await app.client.delete(f"{STUDIES}/{study}")
    assert r.status_code == 204
    ids["delete"] = r.headers["x-request-id"]
    r = await app.client.get(STUDIES, headers=other_headers())
    assert r.status_code == 200
    ids["other-tenant"] = r.headers["x-request-id"]

    mine = [ids[k] for k in ("store", "query", "retrieve", "forbidden", "delete")]
    rows = await audit_rows(app.client, after, mine)
    expected = {
        "store": (110104, "C", "store", 200, 0, study),
        "query": (110112, "E", "search-studies", 200, 0, None),
        "retrieve": (110103, "R", "retrieve", 200, 0, study),
        "forbidden": (110113, "E", "retrieve", 403, 4, study),
        "delete": (110103, "D", "delete", 204, 0, study),
    }
    for name, (event_id, action, tx, status, outcome, study_uid) in expected.items():
        row = rows.get(ids[name])
        assert row is not None, f"no audit row for {name}"
        got = (row["event_id"], row["action"], row["transaction"], row["status"], row["outcome"])
        assert got == (event_id, action, tx, status, outcome), name
        assert row["study_uid"] == study_uid, name
        assert row["client_id"] == CLIENT, name
        assert row["tenant"] == TENANT, name
        assert row["at"]
    # Only the caller's tenant's rows: neither another tenant's nor the anonymous ones.
    assert ids["other-tenant"] not in rows
    assert ids["no-token"] not in rows and ids["bad-token"] not in rows
    assert {row["tenant"] for row in rows.values()} == {TENANT}
    theirs = await audit_rows(app.client, after, [ids["other-tenant"]], other_headers())
    assert ids["other-tenant"] in theirs
    assert not set(mine) & set(theirs)
    assert {row["tenant"] for row in theirs.values()} == {OTHER_TENANT}
    # Failed authentication is a Security Alert, kept with no tenant (who it was is unknown).
    for name in ("no-token", "bad-token"):
        deadline = time.monotonic() + 2
        row = None
        while row is None and time.monotonic() < deadline:
            row = await db.fetchrow("SELECT * FROM audit WHERE request_id = $1", ids[name])
            await asyncio.sleep(0.05)
        assert row is not None, name
        assert (row["event_id"], row["status"], row["outcome"]) == (110113, 401, 4), name
        assert row["tenant"] is None and row["client_id"] is None, name
    # Reading the trail needs the admin scope.
    r = await app.client.get("/admin/audit", headers=bearer(token_for(scopes=("dicomweb.read",))))
    assert r.status_code == 403
    # The trail is append-only.
    pk = next(iter(rows.values()))["pk"]
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("UPDATE audit SET status = 200 WHERE pk = $1", pk)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("DELETE FROM audit WHERE pk = $1", pk)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("TRUNCATE audit")
    assert await db.fetchval("SELECT count(*) FROM audit WHERE pk = $1", pk) == 1


# -- PHI and credentials never reach the logs ---------------------------------------------------


async def test_logs_carry_no_phi_tokens_or_secrets(
    app: App, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    study, series, sop = random_uids()
    name, pid, birth, accession = "Canary^Agatha", "CANARY-PID-4242", "19020304", "CANARY-ACC-31"
    canary_secret = "CANARY-SECRET-" + uuid.uuid4().hex
    wrong_secret = "CANARY-WRONG-" + uuid.uuid4().hex
    data = instance(
        study, series, sop, patient=name, PatientID=pid, PatientBirthDate=birth, AccessionNumber=accession
    )
    client_id, _ = await new_client(db, ("dicomweb.read",), secret=canary_secret, cheap=True)
    issued: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with anonymous(app) as anon:
            for ask in (token_basic, token_post):
                r = await ask(anon, client_id, canary_secret)
                assert r.status_code == 200, r.text
                issued.append(r.json()["access_token"])
                assert (await ask(anon, client_id, wrong_secret)).status_code == 401
            assert (await anon.get(STUDIES, headers=bearer(issued[0]))).status_code == 200
            assert (await anon.get(f"{STUDIES}/{study}", headers=bearer("x" + issued[1]))).status_code == 401
        await store(app.client, [data])
        for params in (
            {"PatientName": name},
            {"PatientID": pid},
            {"PatientBirthDate": birth},
            {"AccessionNumber": accession},
            {"StudyInstanceUID": study},
            {"PatientName": "Canary*", "includefield": "all"},
        ):
            r = await app.client.get(STUDIES, params=params)
            assert r.status_code == 200 and len(r.json()) == 1, (params, r.text)
        r = await app.client.get(f"{STUDIES}/{study}/series", params={"SeriesInstanceUID": series})
        assert r.status_code == 200
        url = f"{STUDIES}/{study}/series/{series}/instances/{sop}"
        assert (await app.client.get(url, headers={"Accept": DICOM_ANY})).status_code == 200
        assert (await app.client.get(url + "/metadata")).status_code == 200
        forbidden = await app.client.get(url, headers=bearer(token_for(scopes=("admin",))))
        assert forbidden.status_code == 403
        assert (await app.client.delete(url)).status_code == 204
        assert (await app.client.delete(f"{STUDIES}/{study}")).status_code == 404
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(JsonFormatter().format(record) for record in server_side)
    assert '"route":"/oauth/token"' in text  # the access log is there ...
    default_token = app.client.headers["authorization"].removeprefix("Bearer ")
    basic = base64.b64encode(f"{client_id}:{canary_secret}".encode()).decode()
    canaries = [name, "Agatha", pid, birth, accession, study, series, sop, canary_secret, wrong_secret, basic]
    for token in [*issued, default_token]:
        canaries += [token, token.split(".")[2]]
    leaked = [c for c in canaries if c in text]
    assert leaked == []  # ... without patient data, UIDs, tokens or secrets
    assert "$argon2" not in text  # nor the secrets' hashes
