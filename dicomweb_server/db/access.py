"""Access-control tables: tenants, OAuth2 clients and their secrets, the audit trail.

Functions take a connection; those that write more than one row open a transaction on it (a
savepoint when the caller has one), so a client and its first secret commit together.
Audit rows are appended with COPY, one round trip per batch (PS3.15 A.5 events, written by
access/audit.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from dicomweb_server.db.pool import Connection


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    tenant: str
    name: str
    scopes: frozenset[str]
    secret_hashes: tuple[str, ...]  # active ones only
    disabled: bool
    rate_requests: int | None
    rate_bytes: int | None


async def create_tenant(conn: Connection, tenant: str, name: str) -> bool:
    """False when the tenant already exists."""
    status = await conn.execute(
        "INSERT INTO tenant (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", tenant, name
    )
    return bool(status.endswith(" 1"))


async def tenant_enabled(conn: Connection, tenant: str) -> bool:
    return bool(await conn.fetchval("SELECT NOT disabled FROM tenant WHERE id = $1", tenant))


async def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, name, disabled, created_at FROM tenant ORDER BY id")
    return [dict(r) for r in rows]


# A tenant's workflow overrides (alembic 0009); NULL takes the server's default.  Names are
# columns, fixed here: never taken from input.
WORKFLOW_COLUMNS = (
    "quiet_seconds",
    "force_seconds",
    "force_policy",
    "auto_orders",
    "max_attempts",
    "lease_seconds",
)


async def tenant_workflow(conn: Connection, tenant: str) -> dict[str, Any] | None:
    """The tenant's workflow overrides (None values: the server's default); None: no tenant."""
    row = await conn.fetchrow(f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM tenant WHERE id = $1", tenant)
    return None if row is None else dict(row)


async def set_tenant_workflow(conn: Connection, tenant: str, values: dict[str, Any], reset: bool) -> bool:
    """Set the given overrides (with ``reset``, every other one back to the default, NULL);
    False when there is no such tenant.  The steps read the row each time: no restart needed."""
    sets = []
    args: list[Any] = [tenant]
    for column in WORKFLOW_COLUMNS:
        if column in values:
            args.append(values[column])
            sets.append(f"{column} = ${len(args)}")
        elif reset:
            sets.append(f"{column} = NULL")
    if not sets:
        return await tenant_workflow(conn, tenant) is not None
    status = await conn.execute(f"UPDATE tenant SET {', '.join(sets)} WHERE id = $1", *args)
    return bool(status.endswith(" 1"))


async def create_client(
    conn: Connection,
    client_id: str,
    tenant: str,
    name: str,
    scopes: Iterable[str],
    secret_hash: str,
    rate_requests: int | None = None,
    rate_bytes: int | None = None,
) -> None:
    async with conn.transaction():  # its own, or a savepoint in the caller's
        await conn.execute(
            "INSERT INTO client (client_id, tenant, name, scopes, rate_requests, rate_bytes) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            client_id,
            tenant,
            name,
            sorted(set(scopes)),
            rate_requests,
            rate_bytes,
        )
        await conn.execute(
            "INSERT INTO client_secret (client_id, hash) VALUES ($1, $2)", client_id, secret_hash
        )


_CLIENT = (
    "SELECT c.client_id, c.tenant, c.name, c.scopes, c.disabled OR t.disabled AS disabled, "
    "c.rate_requests, c.rate_bytes, ARRAY(SELECT s.hash FROM client_secret s WHERE s.client_id = c.client_id "
    "AND (s.expires_at IS NULL OR s.expires_at > now()) ORDER BY s.pk DESC LIMIT 2) AS hashes "
    "FROM client c JOIN tenant t ON t.id = c.tenant"
)


def _client(row: asyncpg.Record) -> ClientRecord:
    return ClientRecord(
        row["client_id"],
        row["tenant"],
        row["name"],
        frozenset(row["scopes"]),
        tuple(row["hashes"]),
        row["disabled"],
        row["rate_requests"],
        row["rate_bytes"],
    )


# The client table's CHECK: ^[A-Za-z0-9._-]{1,64}$
_CLIENT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


async def find_client(conn: Connection, client_id: str) -> ClientRecord | None:
    """The client, or None; an id the table could never hold (a NUL, say) is not looked up."""
    if not 1 <= len(client_id) <= 64 or not _CLIENT_ID_CHARS.issuperset(client_id):
        return None
    row = await conn.fetchrow(_CLIENT + " WHERE c.client_id = $1", client_id)
    return None if row is None else _client(row)


async def list_clients(conn: Connection, tenant: str | None = None) -> list[ClientRecord]:
    rows = await conn.fetch(_CLIENT + " WHERE $1::text IS NULL OR c.tenant = $1 ORDER BY c.client_id", tenant)
    return [_client(r) for r in rows]


async def rotate_secret(conn: Connection, client_id: str, secret_hash: str, overlap_seconds: int) -> bool:
    """Add a secret; the current one stays valid for ``overlap_seconds``, any older one ends now."""
    async with conn.transaction():  # its own, or a savepoint in the caller's
        if await conn.fetchval("SELECT 1 FROM client WHERE client_id = $1 FOR UPDATE", client_id) is None:
            return False
        latest = await conn.fetchval("SELECT max(pk) FROM client_secret WHERE client_id = $1", client_id)
        await conn.execute(
            "UPDATE client_secret SET expires_at = CASE WHEN pk = $2 "
            "THEN least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $3)) ELSE now() END "
            "WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > now())",
            client_id,
            latest,
            float(overlap_seconds),
        )
        await conn.execute(
            "INSERT INTO client_secret (client_id, hash) VALUES ($1, $2)", client_id, secret_hash
        )
        return True


async def set_client_disabled(conn: Connection, client_id: str, disabled: bool) -> bool:
    status = await conn.execute("UPDATE client SET disabled = $2 WHERE client_id = $1", client_id, disabled)
    return bool(status.endswith(" 1"))


AUDIT_COLUMNS = (
    "at", "tenant", "client_id", "event_id", "event", "action", "transaction", "study_uid", "status",
    "outcome", "request_id",
)  # fmt: skip


async def append_audit(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append audit rows (tuples in AUDIT_COLUMNS order) in one round trip."""
    await conn.copy_records_to_table("audit", records=rows, columns=AUDIT_COLUMNS)


_AUDIT_FILTERS = {  # filter name: its condition, the value as $n
    "after": "pk > {}",
    "before": "pk < {}",
    "since": "at >= {}",
    "until": "at < {}",
    "client_id": "client_id = {}",
    "event_id": "event_id = {}",
    "transaction": "transaction = {}",
    "outcome": "outcome = {}",
}


async def read_audit(
    conn: Connection, tenant: str | None, *, limit: int = 100, **filters: Any
) -> list[dict[str, Any]]:
    """Audit rows newest first (by pk, the order they were appended); one tenant's, or everyone's
    for None (the operator; rows with no tenant are only seen so).  ``filters`` are the keys of
    ``_AUDIT_FILTERS``; only those given become conditions, so the (tenant, pk) index serves."""
    conditions: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        args.append(tenant)
        conditions.append("tenant = $1")
    for name, value in filters.items():
        args.append(value)
        conditions.append(_AUDIT_FILTERS[name].format(f"${len(args)}"))
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT pk, {', '.join(AUDIT_COLUMNS)} FROM audit {where}ORDER BY pk DESC LIMIT ${len(args)}",
        *args,
    )
    return [dict(r) for r in rows]
