"""SQL of the event outbox (alembic 0008): append inside the caller's transaction, read after an id.

Functions take a connection, not a pool (DESIGN.md, db/): the writer appends its event rows
on the connection whose transaction writes the change, so both commit or neither does.
Payloads travel as JSON text, encoded and decoded by ``events`` (no codec on the pool), so
nothing depends on how PostgreSQL prints a jsonb value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

# One row to append: (tenant, kind, payload as JSON text).
NewRow = tuple[str, str, str]
# One row read: (id, tenant, kind, payload as JSON text, created_at).
Row = tuple[int, str, str, str, datetime]


# One statement for any number of rows (a STOW request appends one per instance), ids in row order.
_APPEND = (
    "INSERT INTO event (tenant, kind, payload) SELECT u.tenant, u.kind, u.payload::jsonb "
    "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(tenant, kind, payload, n) "
    "ORDER BY u.n"
)


async def append(conn: asyncpg.Connection, rows: Sequence[NewRow]) -> None:
    """Insert ``rows`` on ``conn``: inside its transaction when it has one (it should)."""
    if rows:
        tenants, kinds, payloads = zip(*rows, strict=True)
        await conn.execute(_APPEND, list(tenants), list(kinds), list(payloads))


async def read(conn: asyncpg.Connection, after: int, limit: int, kind: str | None = None) -> list[Row]:
    """Up to ``limit`` rows with an id above ``after``, oldest first; of one ``kind`` if given.

    Ids come from a sequence, so a transaction that commits late can add a row below an id
    already read; readers that must not miss one re-read a short window behind their cursor.
    """
    records = await conn.fetch(
        "SELECT id, tenant, kind, payload::text AS payload, created_at FROM event "
        "WHERE id > $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id LIMIT $3",
        after,
        kind,
        limit,
    )
    return [(r["id"], r["tenant"], r["kind"], r["payload"], r["created_at"]) for r in records]


async def latest(conn: asyncpg.Connection) -> int:
    """The newest id (0 when there is none): where a reader that starts now begins."""
    value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM event")
    return int(value)
