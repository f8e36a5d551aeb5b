"""Rate limits against in-process memory and a real redis-server (started here, never skipped)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import coredis
import pytest

from dicomweb_server.access import ratelimit
from dicomweb_server.access.ratelimit import (
    DEFAULT_POLICY,
    GIB,
    KEY_PREFIX,
    OUTAGE_BACKOFF_SECONDS,
    TOKEN_FAILURES_PER_ADDRESS,
    TOKEN_FAILURES_PER_CLIENT_ADDRESS,
    TOKEN_PER_ADDRESS,
    Decision,
    Policy,
    RateLimiter,
    headers,
)
from dicomweb_server.errors import ServiceUnavailable
from tests.support.redisserver import RedisServer, run_redis

HOUR = 3600


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on its own port; a missing binary fails the run."""
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"  # one per test: tests never see each other's counters


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    uri = None if request.param == "memory" else request.getfixturevalue("redis_server").url
    rl = await RateLimiter.open(uri, namespace=_namespace())
    yield rl
    await rl.close()


async def clear_of_boundary(window: int) -> None:
    """MemoryStorage aligns sliding windows to multiples of the window since the epoch; a
    test that straddles one sees the previous window weigh slightly under 1 and may get one
    extra hit.  Start such tests at least 5 s before a boundary."""
    left = window - time.time() % window
    if left < 5:
        await asyncio.sleep(left + 0.05)


# ---------------------------------------------------------------------------
# Requests


async def test_exactly_n_requests_then_refused(limiter: RateLimiter) -> None:
    policy = Policy(requests=5, bytes=0, window_seconds=HOUR)
    await clear_of_boundary(HOUR)
    seen = [await limiter.hit_request("client-a", policy) for _ in range(5)]
    assert [d.allowed for d in seen] == [True] * 5
    assert [d.remaining for d in seen] == [4, 3, 2, 1, 0]
    assert {(d.limit, d.policy_name, d.window_seconds) for d in seen} == {(5, "requests", HOUR)}
    assert all(0 < d.reset_seconds <= HOUR for d in seen)

    refused = await limiter.hit_request("client-a", policy)
    assert not refused.allowed
    assert refused.remaining == 0
    assert 0 < refused.reset_seconds <= HOUR
    assert headers(refused) == {
        "RateLimit-Policy": f'"requests";q=5;w={HOUR}',
        "RateLimit": f'"requests";r=0;t={refused.reset_seconds}',
        "Retry-After": str(refused.reset_seconds),
    }
    # Refused hits do not count: still refused, still 0 left.
    again = await limiter.hit_request("client-a", policy)
    assert (again.allowed, again.remaining) == (False, 0)


async def test_allowed_decision_has_no_retry_after(limiter: RateLimiter) -> None:
    d = await limiter.hit_request("client-a", DEFAULT_POLICY)
    assert d.allowed and d.remaining == 5999
    h = headers(d)
    assert h["RateLimit-Policy"] == '"requests";q=6000;w=60'
    assert h["RateLimit"] == f'"requests";r=5999;t={d.reset_seconds}'
    assert "Retry-After" not in h
    assert 0 < d.reset_seconds <= 60


async def test_windows_are_per_client(limiter: RateLimiter) -> None:
    policy = Policy(requests=3, bytes=0, window_seconds=HOUR)
    await clear_of_boundary(HOUR)
    for _ in range(3):
        assert (await limiter.hit_request("client-a", policy)).allowed
    assert not (await limiter.hit_request("client-a", policy)).allowed

    b = await limiter.hit_request("client-b", policy)
    assert (b.allowed, b.remaining) == (True, 2)
    assert not (await limiter.hit_request("client-a", policy)).allowed


async def test_changed_policy_is_a_fresh_budget(limiter: RateLimiter) -> None:
    """Counters are keyed on the budget too: raising a client's policy takes effect at once."""
    small = Policy(requests=1, bytes=0, window_seconds=HOUR)
    await clear_of_boundary(HOUR)
    assert (await limiter.hit_request("client-a", small)).allowed
    assert not (await limiter.hit_request("client-a", small)).allowed
    larger = Policy(requests=2, bytes=0, window_seconds=HOUR)
    assert (await limiter.hit_request("client-a", larger)).allowed


# ---------------------------------------------------------------------------
# Bytes


async def test_byte_budget_with_costs(limiter: RateLimiter) -> None:
    policy = Policy(requests=0, bytes=1000, window_seconds=HOUR)
    await clear_of_boundary(HOUR)
    first = await limiter.hit_bytes("client-a", 400, policy)
    assert (first.allowed, first.limit, first.remaining, first.policy_name) == (True, 1000, 600, "bytes")
    assert (await limiter.hit_bytes("client-a", 400, policy)).remaining == 200

    refused = await limiter.hit_bytes("client-a", 300, policy)
    assert (refused.allowed, refused.remaining) == (False, 200)  # the refusal spent nothing
    assert refused.reset_seconds == HOUR  # a whole window for bytes: no retry storm of uploads
    assert headers(refused) == {
        "RateLimit-Policy": f'"bytes";q=1000;qu="content-bytes";w={HOUR}',
        "RateLimit": f'"bytes";r=200;t={HOUR}',
        "Retry-After": str(HOUR),
    }

    last = await limiter.hit_bytes("client-a", 200, policy)
    assert (last.allowed, last.remaining) == (True, 0)
    assert not (await limiter.hit_bytes("client-a", 1, policy)).allowed
    assert (await limiter.hit_bytes("client-b", 1000, policy)).allowed  # per client


async def test_upload_bigger_than_the_budget_is_refused_cleanly(limiter: RateLimiter) -> None:
    policy = Policy(requests=0, bytes=1000, window_seconds=HOUR)
    await clear_of_boundary(HOUR)
    too_big = await limiter.hit_bytes("client-a", 1001, policy)
    assert (too_big.allowed, too_big.remaining, too_big.limit) == (False, 1000, 1000)
    huge = await limiter.hit_bytes("client-a", 2**62, policy)
    assert (huge.allowed, huge.remaining) == (False, 1000)
    assert (await limiter.hit_bytes("client-a", 1000, policy)).allowed  # budget untouched


async def test_default_policy_takes_large_studies(limiter: RateLimiter) -> None:
    """The O(1) sliding-window counter: a 4 GiB cost is two integers, not 4 Gi entries."""
    await clear_of_boundary(60)
    started = time.perf_counter()
    four = await limiter.hit_bytes("client-a", 4 * GIB, DEFAULT_POLICY)
    assert (four.allowed, four.remaining) == (True, 6 * GIB)
    over = await limiter.hit_bytes("client-a", 10 * GIB + 1, DEFAULT_POLICY)
    assert not over.allowed
    assert (await limiter.hit_bytes("client-a", 6 * GIB, DEFAULT_POLICY)).remaining == 0
    assert time.perf_counter() - started < 1


async def test_unlimited_dimensions_are_not_enforced(limiter: RateLimiter) -> None:
    only_requests = Policy(requests=10, bytes=0, window_seconds=60)
    d = await limiter.hit_bytes("client-a", 10**15, only_requests)
    assert d == Decision(True, 0, 0, 0, "bytes", 60)
    unlimited = Policy(requests=0, bytes=0, window_seconds=0)
    r = await limiter.hit_request("client-a", unlimited)
    assert r.allowed and r.limit == 0
    assert headers(r, d) == {}


def test_policy_and_cost_validation() -> None:
    with pytest.raises(ValueError):
        Policy(requests=-1, bytes=0, window_seconds=60)
    with pytest.raises(ValueError):
        Policy(requests=10, bytes=0, window_seconds=0)


async def test_negative_cost_is_a_programming_error(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError):
        await limiter.hit_bytes("client-a", -1, DEFAULT_POLICY)


def test_headers_for_several_policies() -> None:
    """draft-ietf-httpapi-ratelimit-headers-11 §3, §4: Lists of String items with parameters."""
    requests = Decision(True, 600, 599, 42, "requests", 60)
    upload = Decision(False, 10 * GIB, 5, 60, "bytes", 60)
    assert headers(requests, upload) == {
        "RateLimit-Policy": '"requests";q=600;w=60, "bytes";q=10737418240;qu="content-bytes";w=60',
        "RateLimit": '"requests";r=599;t=42, "bytes";r=5;t=60',
        "Retry-After": "60",
    }
    # Retry-After is never 0, and never before the end of an effective window.
    assert headers(Decision(False, 5, 0, 0, "requests", 60))["Retry-After"] == "1"
    assert headers(Decision(False, 5, 0, 7, "a", 60), Decision(False, 5, 0, 9, "b", 60))["Retry-After"] == "9"


# ---------------------------------------------------------------------------
# Token endpoint


async def test_token_failures_per_client_id_and_address(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_FAILURES_PER_CLIENT_ADDRESS.window_seconds)
    attacker, real = "192.0.2.10", "198.51.100.7"
    for _ in range(TOKEN_FAILURES_PER_CLIENT_ADDRESS.requests):
        assert (await limiter.hit_token_attempt("client-a", attacker)).allowed
        await limiter.hit_token_failure(["client-a"], attacker)
    refused = await limiter.hit_token_attempt("client-a", attacker)
    assert (refused.allowed, refused.policy_name, refused.limit) == (False, "token-failures", 20)
    assert 0 < refused.reset_seconds <= 60
    assert "Retry-After" in headers(refused)
    # The same client id from another address is not locked out by those failures.
    from_real = await limiter.hit_token_attempt("client-a", real)
    assert from_real.allowed
    # Another client from the attacker's address: allowed, the address has room left.
    assert (await limiter.hit_token_attempt("client-b", attacker)).allowed


async def test_successes_do_not_count_as_failures(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_PER_ADDRESS.window_seconds)
    for _ in range(TOKEN_FAILURES_PER_CLIENT_ADDRESS.requests + 5):  # attempts, none failed
        assert (await limiter.hit_token_attempt("client-a", "192.0.2.11")).allowed


async def test_token_failures_per_address_across_client_ids(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_FAILURES_PER_ADDRESS.window_seconds)
    address = "203.0.113.9"
    for i in range(TOKEN_FAILURES_PER_ADDRESS.requests):
        assert (await limiter.hit_token_attempt(f"guess-{i}", address)).allowed
        await limiter.hit_token_failure([f"guess-{i}"], address)
    refused = await limiter.hit_token_attempt("client-a", address)
    assert (refused.allowed, refused.policy_name) == (False, "token-address-failures")
    assert (await limiter.hit_token_attempt("client-a", "203.0.113.10")).allowed


async def test_token_attempts_per_address(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_PER_ADDRESS.window_seconds)
    address = "203.0.113.5"
    for i in range(TOKEN_PER_ADDRESS.requests):
        d = await limiter.hit_token_attempt(f"guess-{i}", address)
        assert d.allowed, i
    # Closest to its limit is the address: 0 of 60 left, reported as such.
    assert (d.policy_name, d.remaining) == ("token-address", 0)
    refused = await limiter.hit_token_attempt("yet-another", address)
    assert (refused.allowed, refused.policy_name) == (False, "token-address")
    assert not (await limiter.hit_token_attempt(None, address)).allowed
    assert (await limiter.hit_token_attempt(None, "203.0.113.6")).allowed


async def test_token_attempts_without_client_id_count_the_address(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_PER_ADDRESS.window_seconds)
    first = await limiter.hit_token_attempt(None, "192.0.2.99")
    assert (first.allowed, first.policy_name, first.remaining) == (True, "token-address", 59)
    await limiter.hit_token_failure(["client-a"], "192.0.2.99")
    await limiter.hit_token_failure(["client-a"], "192.0.2.99")
    second = await limiter.hit_token_attempt("client-a", "192.0.2.99")
    assert second.allowed
    # The decision reported is the one closest to its limit: 18/20 failures left beats 58/60 left.
    assert (second.policy_name, second.remaining) == ("token-failures", 18)


async def test_ipv6_addresses_share_their_64(limiter: RateLimiter) -> None:
    await clear_of_boundary(TOKEN_PER_ADDRESS.window_seconds)
    for i in range(TOKEN_PER_ADDRESS.requests):
        assert (await limiter.hit_token_attempt(None, f"2001:db8:1:2::{i + 1:x}")).allowed
    assert not (await limiter.hit_token_attempt(None, "2001:db8:1:2:ffff:ffff:ffff:ffff")).allowed
    assert (await limiter.hit_token_attempt(None, "2001:db8:1:3::1")).allowed
    # IPv4-mapped IPv6 is the IPv4 address.
    for _ in range(TOKEN_PER_ADDRESS.requests):
        assert (await limiter.hit_token_attempt(None, "192.0.2.200")).allowed
    assert not (await limiter.hit_token_attempt(None, "::ffff:192.0.2.200")).allowed
    # Not an IP (a unix socket peer, say): counted under the string itself, never an error.
    assert (await limiter.hit_token_attempt(None, "")).allowed


async def test_memory_storage_is_always_ready() -> None:
    rl = await RateLimiter.open("memory://")
    await rl.ping()
    await rl.close()


async def test_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError):
        await RateLimiter.open("memcached://127.0.0.1:11211")


# ---------------------------------------------------------------------------
# Redis: several workers, keys, outages


async def test_workers_sharing_redis_see_the_same_counts(redis_server: RedisServer) -> None:
    namespace = _namespace()
    one = await RateLimiter.open(redis_server.url, namespace=namespace)
    two = await RateLimiter.open(f"async+{redis_server.url}", namespace=namespace)
    try:
        await one.ping()
        policy = Policy(requests=6, bytes=1000, window_seconds=HOUR)
        remaining = []
        for worker in (one, two, one, two, one, two):
            d = await worker.hit_request("client-a", policy)
            assert d.allowed
            remaining.append(d.remaining)
        assert remaining == [5, 4, 3, 2, 1, 0]
        assert not (await one.hit_request("client-a", policy)).allowed
        assert not (await two.hit_request("client-a", policy)).allowed

        assert (await one.hit_bytes("client-a", 700, policy)).remaining == 300
        assert not (await two.hit_bytes("client-a", 301, policy)).allowed
        assert (await two.hit_bytes("client-a", 300, policy)).remaining == 0

        for _ in range(TOKEN_FAILURES_PER_CLIENT_ADDRESS.requests // 2):
            assert (await one.hit_token_attempt("client-a", "192.0.2.1")).allowed
            await one.hit_token_failure(["client-a"], "192.0.2.1")
            assert (await two.hit_token_attempt("client-a", "192.0.2.1")).allowed
            await two.hit_token_failure(["client-a"], "192.0.2.1")
        assert not (await one.hit_token_attempt("client-a", "192.0.2.1")).allowed
        assert not (await two.hit_token_attempt("client-a", "192.0.2.1")).allowed
        assert (await two.hit_token_attempt("client-a", "192.0.2.2")).allowed
    finally:
        await one.close()
        await two.close()


async def test_concurrent_hits_never_exceed_the_budget(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, 100 concurrent hits on a budget of 30: exactly 30 pass (atomic Lua).

    What is tested is atomicity, not the outage path: the timeouts are made generous, so that a
    busy machine (the whole suite on two cores) cannot turn a slow reply into a fail-open hit."""
    for name in ("CONNECT_TIMEOUT", "STREAM_TIMEOUT", "POOL_WAIT"):
        monkeypatch.setattr(ratelimit, name, 10.0)
    namespace = _namespace()
    workers = [await RateLimiter.open(redis_server.url, namespace=namespace) for _ in range(2)]
    try:
        policy = Policy(requests=30, bytes=0, window_seconds=HOUR)
        decisions = await asyncio.gather(
            *(workers[i % 2].hit_request("client-a", policy) for i in range(100))
        )
        assert sum(d.allowed for d in decisions) == 30
    finally:
        for worker in workers:
            await worker.close()


async def test_storage_keys_hold_no_raw_identifiers(redis_server: RedisServer) -> None:
    namespace = _namespace()
    rl = await RateLimiter.open(redis_server.url, namespace=namespace)
    client_id = "client-with-a-pasted-secret-s3cr3t"
    address = "198.51.100.77"
    try:
        await rl.hit_request(client_id, DEFAULT_POLICY)
        await rl.hit_bytes(client_id, 12345, DEFAULT_POLICY)
        await rl.hit_token_attempt(client_id, address)
        await rl.hit_token_failure([client_id], address)
        await rl.hit_token_attempt("{x}/y*" * 10_000, address)  # hostile id: bounded, inert key
        await rl.hit_token_failure(["{x}/y*" * 10_000], address)
    finally:
        await rl.close()
    client = coredis.Redis.from_url(redis_server.url)
    try:
        keys = [k.decode() for k in await client.keys(f"{KEY_PREFIX}:*{namespace}*")]
    finally:
        client.connection_pool.disconnect()
        await asyncio.sleep(0)
    assert len(keys) >= 4
    for key in keys:
        assert client_id not in key and "s3cr3t" not in key
        assert address not in key and "198.51.100" not in key
        assert len(key) < 160


@pytest.fixture
def outage_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own, to be stopped and restarted by the test."""
    with run_redis(tmp_path / "redis") as server:
        yield server


async def test_redis_outage_fails_open_for_data_and_closed_for_tokens(
    outage_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomweb_server.access.ratelimit")
    rl = await RateLimiter.open(outage_redis.url, namespace=_namespace())
    policy = Policy(requests=2, bytes=100, window_seconds=HOUR)
    try:
        assert (await rl.hit_request("client-a", policy)).limit == 2
        assert (await rl.hit_request("client-a", policy)).allowed
        assert not (await rl.hit_request("client-a", policy)).allowed

        outage_redis.stop()
        started = time.perf_counter()
        # Data path: open, and not enforced (no RateLimit fields to advertise).
        during = await rl.hit_request("client-a", policy)
        assert during == Decision(True, 0, 0, 0, "requests", HOUR)
        assert headers(during) == {}
        upload = await rl.hit_bytes("client-a", 10**6, policy)
        assert upload.allowed and upload.limit == 0
        # Token endpoint: closed, as a 503 with Retry-After.
        with pytest.raises(ServiceUnavailable) as refused:
            await rl.hit_token_attempt("client-a", "192.0.2.1")
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == "5"
        await rl.hit_token_failure(["client-a"], "192.0.2.1")  # the answer is decided: no error
        with pytest.raises(ServiceUnavailable):
            await rl.ping()
        # The breaker: further calls do not wait for Redis timeouts.
        for _ in range(200):
            assert (await rl.hit_request("client-a", policy)).allowed
        assert time.perf_counter() - started < 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable" in warnings[0].getMessage()

        outage_redis.start()  # same port, empty (no persistence)
        await asyncio.sleep(OUTAGE_BACKOFF_SECONDS + 0.1)
        back = await rl.hit_request("client-a", policy)
        assert (back.allowed, back.limit, back.remaining) == (True, 2, 1)
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert (await rl.hit_request("client-a", policy)).remaining == 0
        assert not (await rl.hit_request("client-a", policy)).allowed
        assert (await rl.hit_token_attempt("client-a", "192.0.2.1")).allowed
        await rl.ping()
    finally:
        await rl.close()


async def test_redis_unreachable_from_the_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the port: the server still starts; calls behave as in an outage."""
    caplog.set_level(logging.INFO, logger="dicomweb_server.access.ratelimit")
    with run_redis(tmp_path / "redis") as server:
        url = server.url
    rl = await RateLimiter.open(url, namespace=_namespace())  # the server is gone now
    try:
        assert any("unreachable at startup" in r.getMessage() for r in caplog.records)
        assert (await rl.hit_request("client-a", DEFAULT_POLICY)).allowed
        assert (await rl.hit_bytes("client-a", 5 * GIB, DEFAULT_POLICY)).allowed
        with pytest.raises(ServiceUnavailable):
            await rl.hit_token_attempt(None, "192.0.2.1")
    finally:
        await rl.close()
