"""SQL of the event outbox (alembic 0008, 0009): append inside the caller's transaction, read
after an id, and the tenants' change feed in commit-safe order with its retention.

Functions take a connection, not a pool (DESIGN.md, db/): the writer appends its event rows
on the connection whose transaction writes the change, so both commit or neither does.
Payloads travel as JSON text, encoded and decoded by ``events`` (no codec on the pool), so
nothing depends on how PostgreSQL prints a jsonb value.

The feed's order: ids come from a sequence when a row is inserted, so a transaction that
commits late adds a row below ids a reader has already passed.  Each row also records its
transaction id (``xid``, xid8); the feed returns only rows whose transaction is older than the
oldest one still running (``pg_snapshot_xmin``), in (xid, id) order.  Every such row is final,
and any row written later has a larger xid than any returned, so it sorts after every cursor
handed out: nothing is ever skipped, whatever the commit order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

import asyncpg

# One row to append: (tenant, kind, subject, payload as JSON text).
NewRow = tuple[str, str, str | None, str]
# One row read: (id, tenant, kind, subject, payload as JSON text, created_at).
Row = tuple[int, str, str, str | None, str, datetime]
# A feed position: (xid, id) of the last event handed out.
Cursor = tuple[int, int]
# One feed row: (cursor, id, kind, subject, payload, created_at).
FeedRow = tuple[Cursor, int, str, str | None, str, datetime]


# The channel a committed append notifies (PostgreSQL delivers a NOTIFY only at commit, once per
# transaction for identical ones): long-polling feed readers wake at once instead of polling.
CHANNEL = "dicomweb_event"

# One statement for any number of rows (a STOW request appends one per instance), ids in row order,
# and the wake-up (a data-modifying WITH runs whether or not its result is read).
_APPEND = (
    "WITH appended AS (INSERT INTO event (tenant, kind, subject, payload) "
    "SELECT u.tenant, u.kind, u.subject, u.payload::jsonb "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
    "AS u(tenant, kind, subject, payload, n) ORDER BY u.n) "
    f"SELECT pg_notify('{CHANNEL}', '')"
)


async def append(conn: asyncpg.Connection, rows: Sequence[NewRow]) -> None:
    """Insert ``rows`` on ``conn``: inside its transaction when it has one (it should)."""
    if rows:
        tenants, kinds, subjects, payloads = zip(*rows, strict=True)
        await conn.execute(_APPEND, list(tenants), list(kinds), list(subjects), list(payloads))


@contextlib.asynccontextmanager
async def listening(pool: asyncpg.Pool, woken: Callable[[], None]) -> AsyncIterator[bool]:
    """Call ``woken()`` whenever a transaction that appended events commits, for as long as the
    context lasts, on one connection of ``pool`` held for it.  Yields False (and calls nothing)
    when the database cannot be reached now: the caller then polls."""
    try:
        conn = await pool.acquire()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        yield False
        return

    def notified(*_: object) -> None:
        woken()

    try:
        await conn.add_listener(CHANNEL, notified)
        yield True
    finally:
        with contextlib.suppress(Exception):
            await conn.remove_listener(CHANNEL, notified)
        with contextlib.suppress(Exception):
            await pool.release(conn)


async def read(conn: asyncpg.Connection, after: int, limit: int, kind: str | None = None) -> list[Row]:
    """Up to ``limit`` rows with an id above ``after``, oldest first; of one ``kind`` if given.

    For in-process readers that only need to notice activity (the statistics keeper); a reader
    that must not miss a row uses ``feed``.
    """
    records = await conn.fetch(
        "SELECT id, tenant, kind, subject, payload::text AS payload, created_at FROM event "
        "WHERE id > $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id LIMIT $3",
        after,
        kind,
        limit,
    )
    return [(r["id"], r["tenant"], r["kind"], r["subject"], r["payload"], r["created_at"]) for r in records]


async def feed(
    conn: asyncpg.Connection,
    tenant: str,
    after: Cursor | None,
    kinds: Sequence[str] | None,
    limit: int,
) -> list[FeedRow]:
    """A tenant's rows after ``after`` (None: from the oldest kept), in (xid, id) order, only
    those every earlier transaction has settled (see the module's docstring)."""
    xid, id = after if after is not None else (0, 0)
    records = await conn.fetch(
        "SELECT xid::text::bigint AS x, id, kind, subject, payload::text AS payload, created_at FROM event "
        "WHERE tenant = $1 AND (xid, id) > ($2::text::xid8, $3::bigint) "
        "AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
        "AND ($4::text[] IS NULL OR kind = ANY($4::text[])) "
        "ORDER BY xid, id LIMIT $5",
        tenant,
        str(xid),
        id,
        list(kinds) if kinds else None,
        limit,
    )
    return [
        ((r["x"], r["id"]), r["id"], r["kind"], r["subject"], r["payload"], r["created_at"]) for r in records
    ]


async def pruned(conn: asyncpg.Connection) -> Cursor | None:
    """The newest cursor retention has removed (None: nothing removed yet)."""
    row = await conn.fetchrow("SELECT pruned_xid::text::bigint AS x, pruned_id FROM event_retention")
    return None if row is None else (row["x"], row["pruned_id"])


async def prune(conn: asyncpg.Connection, older_than_seconds: float, batch: int = 10_000) -> int:
    """Delete up to ``batch`` events older than the retention, remember the newest cursor
    deleted (for the feed's 410), in one transaction; how many went."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "WITH gone AS (DELETE FROM event WHERE id IN (SELECT id FROM event "
            "WHERE created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2) "
            "RETURNING xid, id) "
            "SELECT count(*) AS n, max(xid::text::bigint) AS x, "
            "max(id) FILTER (WHERE xid = (SELECT max(xid) FROM gone)) AS i FROM gone",
            older_than_seconds,
            batch,
        )
        assert row is not None
        if row["n"]:
            await conn.execute(
                "INSERT INTO event_retention (pruned_xid, pruned_id) VALUES ($1::text::xid8, $2) "
                "ON CONFLICT (one) DO UPDATE SET "
                "pruned_xid = greatest(event_retention.pruned_xid, EXCLUDED.pruned_xid), "
                "pruned_id = CASE WHEN EXCLUDED.pruned_xid >= event_retention.pruned_xid "
                "THEN EXCLUDED.pruned_id ELSE event_retention.pruned_id END",
                str(row["x"]),
                row["i"],
            )
        return int(row["n"])


async def latest(conn: asyncpg.Connection) -> int:
    """The newest id (0 when there is none): where a reader that starts now begins."""
    value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM event")
    return int(value)
