"""The connection pool, and the only module that knows it (DESIGN.md, db/).

Every other db module takes a connection, so that a service composes one transaction across
modules (an instance row and its event row commit together, or neither does).  Callers open
that connection here: ``connection`` for one statement or a read, ``transaction`` for a unit
of work, ``in_transaction`` for a unit of work that a concurrent writer can force to start over.
Losing the database is a 503 (ServiceUnavailable), never a 500.  ``Pool`` and ``Connection``
are the types the rest of the package names, so nothing outside db/ imports asyncpg.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias, TypeVar, cast
from uuid import UUID

import asyncpg

from dicomweb_server.errors import ServiceUnavailable

Pool: TypeAlias = asyncpg.Pool
Connection: TypeAlias = asyncpg.Connection

T = TypeVar("T")

# How many times ``in_transaction`` runs a unit of work before the client is told to retry.
ATTEMPTS = 3


class Race(Exception):
    """A row another transaction was creating disappeared before this one could read it.

    Raised inside a unit of work run by ``in_transaction``, which rolls back and starts over.
    """


# Why a unit of work is worth starting over: PostgreSQL chose it as a deadlock victim or could
# not serialize it, a concurrent DELETE removed the study or series it joined (a foreign key
# violation), or it saw a row vanish (Race).
RACES: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ForeignKeyViolationError,
    Race,
)


async def create_pool(url: str, size: int) -> Pool:
    try:
        return await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            command_timeout=60,
            # Statements are prepared once per connection; a generic plan chosen after five runs
            # can ignore the selectivity of this run's values (54 ms instead of 0.1 ms measured),
            # and JIT compilation costs more than it saves on index-sized queries.
            server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off"},
        )
    except (OSError, asyncpg.PostgresError):
        raise ServiceUnavailable("The database is unavailable; try again later") from None


@contextlib.asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection; losing the database becomes a 503, never a 500."""
    try:
        async with pool.acquire() as conn:
            yield cast(Connection, conn)
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
        raise ServiceUnavailable("The database is unavailable; try again later") from None


@contextlib.asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection inside one transaction: committed on exit, rolled back on an exception."""
    async with connection(pool) as conn, conn.transaction():
        yield conn


async def in_transaction(pool: Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``work(conn)`` in one transaction, starting over (at most ``ATTEMPTS`` times) on a race.

    ``work`` must build its result afresh on each run: a run that lost the race rolled back.
    """
    for attempt in range(ATTEMPTS):
        try:
            async with transaction(pool) as conn:
                return await work(conn)
        except RACES:
            if attempt == ATTEMPTS - 1:
                raise ServiceUnavailable("index busy, please retry") from None
    raise AssertionError("unreachable")


def require_transaction(conn: Connection) -> None:
    """For a function of several statements that must commit together, and in its caller's transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("call this inside a transaction (db.pool.transaction)")


async def ping(pool: Pool) -> None:
    async with connection(pool) as conn:
        await conn.fetchval("SELECT 1")


def as_uuid(value: str) -> UUID | None:
    """An id from a request (an order, job or report) as the uuid column takes it; None when it
    is not one, so a malformed id is "no such row" rather than a database error."""
    try:
        return UUID(value)
    except ValueError:
        return None
