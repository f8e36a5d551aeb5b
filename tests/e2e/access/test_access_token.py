"""The token endpoint under attack and in its error messages (issue 10, items 6, 9 and 15).

- Nobody can lock a client out: wrong secrets are throttled per (client id, address) and per
  address, so the real client from another address keeps getting tokens (ASGI with distinct
  client addresses, and real sockets from 127.0.0.2 and 127.0.0.1).
- ``invalid_scope`` when a client asks only for scopes it lacks, naming them.
- A refused secret says the credentials were not accepted, with a Basic challenge.
"""

from __future__ import annotations

import asyncio
import base64
import time

import asyncpg
import httpx
import pytest

from dicomweb_server.access.ratelimit import TOKEN_FAILURES_PER_CLIENT_ADDRESS
from dicomweb_server.db import access as index
from dicomweb_server.db.pool import connection
from tests.conftest import TENANT, App, Server
from tests.e2e.access.test_access import CHEAP, TOKEN, anonymous, new_client, token_basic, token_post

FAILURES = TOKEN_FAILURES_PER_CLIENT_ADDRESS.requests


def from_address(app: App, host: str) -> httpx.AsyncClient:
    """A client on the same app whose requests come from ``host`` (the ASGI scope's client)."""
    asgi = app.client._transport
    assert isinstance(asgi, httpx.ASGITransport)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi.app, client=(host, 40000)), base_url="http://testserver"
    )


async def test_wrong_secrets_from_one_address_do_not_lock_the_client_out(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with from_address(app, "192.0.2.66") as attacker, from_address(app, "198.51.100.20") as real:
        statuses = [
            (await token_basic(attacker, client_id, f"guess-{i}")).status_code for i in range(FAILURES)
        ]
        assert statuses == [401] * FAILURES
        refused = await token_basic(attacker, client_id, "one-more-guess")
        assert refused.status_code == 429
        assert refused.json()["error"] == "slow_down"
        assert int(refused.headers["retry-after"]) >= 1
        # Even the right secret from the attacker's address waits (it may be a lucky guess) ...
        assert (await token_basic(attacker, client_id, secret)).status_code == 429
        # ... while the real client, from its own address, keeps getting tokens.
        for ask in (token_basic, token_post):
            r = await ask(real, client_id, secret)
            assert r.status_code == 200, r.text
            assert r.json()["access_token"]


async def test_guessing_across_client_ids_is_throttled_per_address(app: App, db: asyncpg.Pool) -> None:
    victims = [await new_client(db, cheap=True) for _ in range(3)]
    async with from_address(app, "203.0.113.30") as attacker, from_address(app, "203.0.113.31") as real:
        statuses = [
            (await token_basic(attacker, victims[i % 3][0], f"guess-{i}")).status_code for i in range(40)
        ]
        assert statuses.count(401) == 30 and statuses[30:] == [429] * 10  # 30 failures an address
        for client_id, secret in victims:
            assert (await token_basic(real, client_id, secret)).status_code == 200


async def test_successes_do_not_throttle_the_client(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        for _ in range(FAILURES + 5):
            assert (await token_basic(anon, client_id, secret)).status_code == 200


def test_the_lock_out_attempt_over_real_sockets(live_server: Server) -> None:
    """Two loopback addresses: the attacker connects from 127.0.0.2, the real client from 127.0.0.1."""
    client_id = "lockout-socket"
    secret = "the-real-secret-" + "x" * 20
    _create_client(live_server, client_id, secret)
    form = {"grant_type": "client_credentials"}
    attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    real = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=30)
    with attacker, real:
        url = live_server.url + TOKEN
        for i in range(FAILURES):
            assert attacker.post(url, data=form, auth=(client_id, f"guess-{i}")).status_code == 401
        refused = attacker.post(url, data=form, auth=(client_id, secret))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        ok = real.post(url, data=form, auth=(client_id, secret))
        assert ok.status_code == 200, ok.text


def _create_client(server: Server, client_id: str, secret: str) -> None:
    """The client, with this secret only, in the server's database (from this sync test's own loop)."""

    async def go() -> None:
        pool = await asyncpg.create_pool(server.env["DATABASE_URL"], min_size=1, max_size=1)
        try:
            async with connection(pool) as conn:
                if await index.find_client(conn, client_id) is None:
                    await index.create_client(
                        conn, client_id, TENANT, client_id, ["dicomweb.read"], CHEAP.hash(secret)
                    )
                else:
                    await index.rotate_secret(conn, client_id, CHEAP.hash(secret), 0)
        finally:
            await pool.close()

    asyncio.run(go())


# -- messages ---------------------------------------------------------------------------------------


async def test_asking_only_for_scopes_the_client_lacks_is_invalid_scope(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, ("dicomweb.read",), cheap=True)
    async with anonymous(app) as anon:
        r = await token_basic(anon, client_id, secret, scope="admin dicomweb.delete")
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "invalid_scope"
        assert "admin" in body["error_description"] and "dicomweb.delete" in body["error_description"]
        assert "access_token" not in body
        r = await token_basic(anon, client_id, secret, scope="dicomweb.everything")
        assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")
        assert "dicomweb.everything" in r.json()["error_description"]
        # Some of what was asked is allowed: the token narrows to that (RFC 6749 §3.3).
        r = await token_basic(anon, client_id, secret, scope="dicomweb.read admin")
        assert (r.status_code, r.json()["scope"]) == (200, "dicomweb.read")


async def test_a_refused_secret_says_the_credentials_were_not_accepted(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        for ask in (token_basic, token_post):
            r = await ask(anon, client_id, secret + "x")
            assert r.status_code == 401
            assert r.json() == {
                "error": "invalid_client",
                "error_description": "The client credentials were not accepted",
            }
            assert r.headers["www-authenticate"].startswith("Basic ")
            assert "cannot authenticate" not in r.text
        r = await anon.post(TOKEN, data={"grant_type": "client_credentials"})
        assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
        assert "No client credentials" in r.json()["error_description"]


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


HOSTILE = {
    "basic not base64": ({"Authorization": "Basic !!!notbase64"}, b"grant_type=client_credentials"),
    "basic not utf-8": (_basic(b"\xff\xfe:\xff"), b"grant_type=client_credentials"),
    "basic without a colon": (_basic(b"nocolon"), b"grant_type=client_credentials"),
    "basic with a NUL": (_basic(b"a\x00b:c"), b"grant_type=client_credentials"),
    "basic 100 kB id": (_basic(b"x" * 100_000 + b":y"), b"grant_type=client_credentials"),
    "post with a NUL": ({}, b"grant_type=client_credentials&client_id=a%00b&client_secret=c"),
    "post not utf-8": ({}, b"grant_type=client_credentials&client_id=%ff%fe&client_secret=%ff"),
    "scope with a NUL": ({}, b"grant_type=client_credentials&client_id=a&client_secret=b&scope=%00"),
    "body not utf-8": ({}, b"\xff\xfe\x00"),
    "bearer instead of basic": ({"Authorization": "Bearer xyz"}, b"grant_type=client_credentials"),
    "a 2 MB field": ({}, b"grant_type=client_credentials&client_id=a&client_secret=" + b"s" * 2_000_000),
    "5,000 fields": ({}, b"grant_type=client_credentials" + b"&x=1" * 5_000),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_token_requests_are_4xx_and_audited(app: App, db: asyncpg.Pool, case: str) -> None:
    headers, body = HOSTILE[case]
    async with anonymous(app) as anon:
        r = await anon.post(
            TOKEN, content=body, headers={"Content-Type": "application/x-www-form-urlencoded", **headers}
        )
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert "access_token" not in r.json()
    assert r.json()["error"] in ("invalid_request", "invalid_client", "unsupported_grant_type"), r.json()
    request_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 3
    row = None
    while row is None and time.monotonic() < deadline:
        row = await db.fetchrow("SELECT * FROM audit WHERE request_id = $1", request_id)
        await asyncio.sleep(0.05)
    assert row is not None and (row["event_id"], row["tenant"]) == (110113, None)
