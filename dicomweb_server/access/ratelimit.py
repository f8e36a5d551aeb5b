"""Per-client rate limits: requests and uploaded bytes per window, and the token endpoint throttle.

Built on the ``limits`` package's async API.  The strategy is limits' **sliding window
counter**, not the moving window, for two reasons:

- Bytes.  The moving window stores one entry per unit of cost (MemoryStorage prepends
  ``cost`` list entries, the Redis script pushes ``cost`` list items), so one 4 GiB STOW
  would allocate billions of entries.  The sliding window counter keeps two integers per
  key whatever the cost: O(1) memory and one Lua call in Redis.
- No fixed-window burst: a client cannot spend a full budget at 12:00:59 and another at
  12:01:00; the previous window's count still weighs on the new one, decaying linearly.

Its price is an approximation: the previous window is assumed to have been used evenly.
The allow/refuse decision itself is atomic (one Lua script in Redis, a lock in memory),
so N workers sharing one Redis never allow more than the budget between them.

Storage: ``None`` or ``memory://`` keeps counters in this process (one worker);
``redis://host:port/db`` (or ``async+redis://``, ``rediss://``) shares them between
workers and hosts.  Counters are keyed on the *verified* client id
(RELIABILITY.md, "Rate limits"); the token endpoint, where nothing is verified yet, is
keyed on the remote address, and its failures on (claimed client id, address): never on the
claimed client id alone, which anyone could use to lock a client out.

Keys: every identifier is hashed (BLAKE2b, 128 bits) before it reaches a storage key.  This
keeps keys short and of one shape whatever a client sends (a pasted secret in the
``client_id`` field, ``{``/``}`` that would break Redis Cluster hash tags, ``/`` that limits
uses as separator, megabyte-long ids), and keeps raw ids out of ``KEYS *``.  It is not
anonymisation: IPv4 addresses are few enough to enumerate.  Keys hold no PHI in the first
place (client ids and addresses only) and expire after two windows.  IPv6 addresses are
counted per /64, the usual end-site allocation, so one host cannot rotate through its own
prefix to escape the per-address throttle.

Storage unreachable (decided per path, and tested):

- ``hit_request`` / ``hit_bytes`` fail **open**: the request was already authenticated,
  the limit protects capacity rather than data, and a hospital modality whose STOW is
  refused queues or drops studies.  The outage is logged once as a warning (and the
  recovery once, with the number of calls made meanwhile).
- ``hit_token_attempt`` fails **closed** by raising :class:`ServiceUnavailable` (503 with
  ``Retry-After``): the brute-force throttle is a security control, and an attacker who can
  disturb Redis must not gain unlimited guesses.  Existing tokens keep working meanwhile
  (the data path fails open), so only new token grants wait for the outage to end.

After a failure the storage is left alone for ``OUTAGE_BACKOFF_SECONDS`` so that an outage
does not add a connect timeout to every request.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 (23 May 2026), see :func:`headers`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import BlockingConnectionPool

from dicomweb_server.errors import ServiceUnavailable

log = logging.getLogger("dicomweb_server.access.ratelimit")

GIB = 1024**3


@dataclass(frozen=True)
class Policy:
    """A client's budget per window; 0 means unlimited for that dimension."""

    requests: int
    bytes: int
    window_seconds: int

    def __post_init__(self) -> None:
        if self.requests < 0 or self.bytes < 0:
            raise ValueError("rate limit budgets must be >= 0 (0 = unlimited)")
        if (self.requests or self.bytes) and self.window_seconds < 1:
            raise ValueError("a limited policy needs window_seconds >= 1")


# A hospital integrator (router, PACS forwarder, modality gateway) sends one STOW per
# series or study and a few QIDO/WADO calls per study, far below 100 requests/s.  A viewer
# fetches frame by frame: OHIF opening a 500-image series makes about 500 frame requests in
# a few seconds, so 6,000 a minute lets a few people open a few series a minute each on one
# client id (README, "Sizing").  10 GiB/min (~1.4 Gbit/s) is more than a
# hospital's usual 1 Gbit/s uplink, so one integrator never hits it on a normal link,
# and it still passes the largest single STOW the anchors accept (Azure/Orthanc 4 GB)
# twice over in a minute; what it stops is a looping or runaway sender filling storage.
# Settings (DICOMWEB_RATE_REQUESTS, DICOMWEB_RATE_BYTES) have the same defaults.
DEFAULT_POLICY = Policy(requests=6000, bytes=10 * GIB, window_seconds=60)

# Token endpoint (RFC 6749 §4.4).  Nothing is verified yet, so nothing is keyed on the client id
# alone: whoever knows a client id could otherwise lock that client out (20 wrong secrets from
# anywhere used to refuse the real client everywhere).  Instead:
# - every attempt counts against its address: 60 a minute leaves room for several clients
#   behind one NAT and bounds the secret-hashing work one address can cause;
# - failed attempts (401 invalid_client) count against (claimed client id, address), 20 a minute,
#   and against the address, 30 a minute whatever the client ids: guessing is slowed where it
#   comes from, and the real client from another address keeps getting tokens.
# A refused attempt is not hashed at all.  Secrets are 256 random bits, so guessing from many
# addresses at once gains nothing either.
TOKEN_PER_ADDRESS = Policy(requests=60, bytes=0, window_seconds=60)
TOKEN_FAILURES_PER_CLIENT_ADDRESS = Policy(requests=20, bytes=0, window_seconds=60)
TOKEN_FAILURES_PER_ADDRESS = Policy(requests=30, bytes=0, window_seconds=60)

OUTAGE_BACKOFF_SECONDS = 1.0
# Redis timeouts (seconds): a lost Redis must cost a request little, once.
CONNECT_TIMEOUT = 0.25
STREAM_TIMEOUT = 0.5
# At most this many Redis connections per process; a burst of hits waits (up to POOL_WAIT) for
# one instead of opening a socket each: 100 concurrent first hits used to open 100 connections
# at once, and on a busy machine some missed CONNECT_TIMEOUT and failed open.
MAX_CONNECTIONS = 16
POOL_WAIT = 1.0
KEY_PREFIX = "dicomweb-ratelimit"

_MEMORY_URIS = {"memory://", "async+memory://"}
_REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")
_FAILURES = (StorageError, OSError)  # OSError covers builtin TimeoutError and socket errors


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit.  ``limit == 0`` means "not enforced": the policy is
    unlimited in that dimension, or the storage was unreachable and the call failed open.

    ``reset_seconds`` is the draft's effective window (``t``): within it the client can use
    no more than ``remaining``.  For a refused byte hit it is the whole window (see
    :meth:`RateLimiter.hit_bytes`)."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    policy_name: str
    window_seconds: int


# Quota units per draft-11 §3.1.2 ("requests" is the default and is not sent).
_UNITS = {"bytes": "content-bytes"}


def headers(*decisions: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers-11),
    plus ``Retry-After`` (RFC 9110 §10.2.3) when any decision refused.

    One call per response with every decision that applied, e.g. requests and bytes for
    a STOW::

        RateLimit-Policy: "requests";q=6000;w=60, "bytes";q=10737418240;qu="content-bytes";w=60
        RateLimit: "requests";r=599;t=42, "bytes";r=10737000000;t=42
        Retry-After: 60                       (only when refused)

    Both fields are Structured Field Lists whose items are Strings naming the policy
    (draft-11 §3, §4).  Decisions that are not enforced (``limit == 0``) are left out.
    ``Retry-After`` is the largest effective window among refused decisions, at least 1,
    so it is never earlier than the end of an effective window (draft-11 §6).
    """
    policy: list[str] = []
    current: list[str] = []
    retry_after = 0
    for d in decisions:
        if d.limit <= 0:
            continue
        unit = _UNITS.get(d.policy_name)
        unit_param = f';qu="{unit}"' if unit else ""
        policy.append(f'"{d.policy_name}";q={d.limit}{unit_param};w={d.window_seconds}')
        current.append(f'"{d.policy_name}";r={d.remaining};t={d.reset_seconds}')
        if not d.allowed:
            retry_after = max(retry_after, d.reset_seconds, 1)
    out: dict[str, str] = {}
    if policy:
        out["RateLimit-Policy"] = ", ".join(policy)
        out["RateLimit"] = ", ".join(current)
    if retry_after:
        out["Retry-After"] = str(retry_after)
    return out


def _digest(value: str) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _address_key(address: str) -> str:
    """IPv4 as is, IPv6 as its /64 (IPv4-mapped IPv6 as the IPv4), anything else verbatim."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _item(amount: int, window_seconds: int, namespace: str) -> RateLimitItem:
    return RateLimitItemPerSecond(amount, window_seconds, namespace=namespace)


def _decision(allowed: bool, item: RateLimitItem, stats: WindowStats, name: str, window: int) -> Decision:
    reset = math.ceil(stats.reset_time - time.time())
    if reset < 1 and stats.remaining < item.amount:
        # limits derives the Redis reset as ``ttl % window``; a window's key is created with a
        # TTL of two windows, so right after its first hit that is 0 while a whole window is
        # actually ahead.  (In memory a reset under 1 s does not otherwise occur.)
        reset = window
    return Decision(allowed, item.amount, max(0, stats.remaining), max(0, reset), name, window)


def _not_enforced(name: str, policy: Policy) -> Decision:
    return Decision(True, 0, 0, 0, name, policy.window_seconds)


class RateLimiter:
    """Counters in one storage (process memory or a shared Redis), one namespace."""

    def __init__(self, storage: Storage, namespace: str):
        self._storage = storage
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._namespace = namespace
        self._down_until = 0.0
        self._outage_calls = 0

    @classmethod
    async def open(cls, storage_uri: str | None, *, namespace: str = "dicomweb") -> RateLimiter:
        """A limiter on ``memory://`` (also for ``None``) or ``redis://host:port/db``.

        An unreachable Redis does not stop the server from starting: it is logged, and
        the calls then behave as described in the module docstring.  The URI is never
        logged (it may carry a password).
        """
        if storage_uri is None or storage_uri in _MEMORY_URIS:
            return cls(MemoryStorage(), namespace)
        uri = storage_uri.removeprefix("async+")
        if not uri.startswith(_REDIS_SCHEMES):
            raise ValueError("rate limit storage must be memory:// or redis://host:port/db")
        # redis-py with hiredis: about 0.27 ms per hit here, against 0.42 ms with coredis.
        pool = BlockingConnectionPool.from_url(
            uri,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=STREAM_TIMEOUT,
        )
        storage = RedisStorage(
            "async+" + uri,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=KEY_PREFIX,
            connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis-py (use_basic)
        )
        limiter = cls(storage, namespace)
        if not await storage.check():
            log.warning("rate limit storage unreachable at startup")
        return limiter

    @property
    def remote(self) -> bool:
        """Whether a hit costs a network round trip (Redis) rather than a dict update."""
        return isinstance(self._storage, RedisStorage)

    async def close(self) -> None:
        storage = self._storage
        if isinstance(storage, MemoryStorage):
            timer = storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
                await asyncio.gather(timer, return_exceptions=True)
            await storage.reset()
        elif isinstance(storage, RedisStorage):
            client = getattr(storage.bridge, "storage", None)
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                closing = pool.disconnect()  # a coroutine with redis-py, a plain call with coredis
                if asyncio.iscoroutine(closing):
                    await closing
            await asyncio.sleep(0)  # let the transports run their close callbacks

    async def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` unless the storage answers (for /readyz)."""
        if not await self._storage.check():
            raise ServiceUnavailable("rate limit storage unreachable")

    async def hit_request(self, client_id: str, policy: Policy) -> Decision:
        """Count one request for a verified client; fails open if the storage is down."""
        if not policy.requests:
            return _not_enforced("requests", policy)
        item = _item(policy.requests, policy.window_seconds, self._namespace)
        outcome = await self._guarded(item, ("requests", _digest(client_id)), 1)
        if outcome is None:
            return _not_enforced("requests", policy)
        allowed, stats = outcome
        return _decision(allowed, item, stats, "requests", policy.window_seconds)

    async def hit_bytes(self, client_id: str, n: int, policy: Policy) -> Decision:
        """Count ``n`` uploaded bytes; fails open if the storage is down.

        A refusal leaves the budget untouched.  Its ``reset_seconds`` (and so
        ``Retry-After``) is the whole window: limits reports when the *next* unit frees
        up, which for a byte cost is a fraction of a second and would invite a retry storm
        of large uploads.  ``n > policy.bytes`` can never fit; the caller should answer
        413 rather than 429 for it (it is refused here either way, never an error).
        """
        if n < 0:
            raise ValueError("byte count must be >= 0")
        if not policy.bytes:
            return _not_enforced("bytes", policy)
        item = _item(policy.bytes, policy.window_seconds, self._namespace)
        outcome = await self._guarded(item, ("bytes", _digest(client_id)), n)
        if outcome is None:
            return _not_enforced("bytes", policy)
        allowed, stats = outcome
        decision = _decision(allowed, item, stats, "bytes", policy.window_seconds)
        return decision if allowed else replace(decision, reset_seconds=policy.window_seconds)

    async def hit_token_attempt(self, client_id: str | None, address: str) -> Decision:
        """Count one token request against its address, and check (without counting) the failures
        of (claimed client id, address) and of the address.

        The answer is the refused one if any refused (the longest wait if several did), else the
        one closest to its limit.  Raises :class:`ServiceUnavailable` if the storage is down
        (fail closed).  Failures are counted by :meth:`hit_token_failure`.
        """
        where = _address_key(address)
        decisions = [await self._token_check(TOKEN_PER_ADDRESS, "token-address", where, hit=True)]
        decisions.append(
            await self._token_check(TOKEN_FAILURES_PER_ADDRESS, "token-address-failures", where, hit=False)
        )
        if client_id is not None:
            decisions.append(
                await self._token_check(
                    TOKEN_FAILURES_PER_CLIENT_ADDRESS, "token-failures", f"{client_id}\n{where}", hit=False
                )
            )
        refused = [d for d in decisions if not d.allowed]
        if refused:
            return max(refused, key=lambda d: d.reset_seconds)
        return min(decisions, key=lambda d: d.remaining / d.limit)

    async def hit_token_failure(self, client_ids: Sequence[str], address: str) -> None:
        """Count one failed token request (its client authentication was refused) against each
        claimed client id from this address, and once against the address.

        The answer to this request is already decided: a storage outage here is only logged
        (the next attempt fails closed in :meth:`hit_token_attempt`)."""
        where = _address_key(address)
        checks = [(TOKEN_FAILURES_PER_ADDRESS, "token-address-failures", where)]
        checks += [
            (TOKEN_FAILURES_PER_CLIENT_ADDRESS, "token-failures", f"{c}\n{where}") for c in set(client_ids)
        ]
        for policy, name, who in checks:
            item = _item(policy.requests, policy.window_seconds, self._namespace)
            await self._guarded(item, (name, _digest(who)), 1)

    async def _token_check(self, policy: Policy, name: str, who: str, *, hit: bool) -> Decision:
        item = _item(policy.requests, policy.window_seconds, self._namespace)
        key = (name, _digest(who))
        outcome = await (self._guarded(item, key, 1) if hit else self._guarded(item, key, 1, peek=True))
        if outcome is None:
            raise ServiceUnavailable("token endpoint throttle unavailable", retry_after=5)
        return _decision(outcome[0], item, outcome[1], name, policy.window_seconds)

    async def _guarded(
        self, item: RateLimitItem, key: Sequence[str], cost: int, *, peek: bool = False
    ) -> tuple[bool, WindowStats] | None:
        """Hit (or with ``peek``, only test) and read the window; None while the storage is unreachable."""
        if self._down_until and time.monotonic() < self._down_until:
            self._outage_calls += 1
            return None
        try:
            outcome = await (self._peek(item, key, cost) if peek else self._consume(item, key, cost))
        except _FAILURES as exc:
            if not self._down_until:
                log.warning(
                    "rate limit storage unreachable: requests and uploads go unlimited, "
                    "the token endpoint answers 503",
                    extra={"error": type(exc).__name__},  # the type only: messages may carry the URI
                )
            self._down_until = time.monotonic() + OUTAGE_BACKOFF_SECONDS
            self._outage_calls += 1
            return None
        if self._down_until:
            log.info("rate limit storage reachable again", extra={"calls_during_outage": self._outage_calls})
            self._down_until = 0.0
            self._outage_calls = 0
        return outcome

    async def _consume(self, item: RateLimitItem, key: Sequence[str], cost: int) -> tuple[bool, WindowStats]:
        # Two round trips to Redis, in this order.  Sending both at once saves ~15% but
        # coredis then may run them on different connections (while connecting, or when a
        # script is first loaded), and ``remaining`` would sometimes miss this very hit.
        allowed = await self._strategy.hit(item, *key, cost=cost)
        return allowed, await self._strategy.get_window_stats(item, *key)

    async def _peek(self, item: RateLimitItem, key: Sequence[str], cost: int) -> tuple[bool, WindowStats]:
        """Whether a hit would be allowed, and the window, without counting anything."""
        allowed = await self._strategy.test(item, *key, cost=cost)
        return allowed, await self._strategy.get_window_stats(item, *key)


__all__ = [
    "DEFAULT_POLICY",
    "TOKEN_FAILURES_PER_ADDRESS",
    "TOKEN_FAILURES_PER_CLIENT_ADDRESS",
    "TOKEN_PER_ADDRESS",
    "Decision",
    "Policy",
    "RateLimiter",
    "headers",
]
