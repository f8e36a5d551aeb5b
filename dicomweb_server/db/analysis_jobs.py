"""SQL of analysis jobs (alembic 0009, ``analysis_job``): one row per claim of a pending order
by the analysis service, with its lease (issue #12 §3).

The next order is picked with ``FOR UPDATE SKIP LOCKED`` on ``orders_pending_idx`` (urgent
first, then the oldest ``pending_since``), so two workers claiming at once never see the same
order; the partial unique index ``analysis_job_live_idx`` backs it (one live claim per order).
The order's move itself is ``db.orders.transition`` in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from dicomweb_server.db.pool import Connection, as_uuid, require_transaction


@dataclass(frozen=True)
class Job:
    """One claim as its routes need it; ``live``: active and its lease not yet run out."""

    id: str
    order_id: str
    tenant: str
    attempt: int
    worker: str
    client_id: str
    state: str
    lease_expires_at: datetime
    live: bool
    lease_left: float  # seconds until the lease runs out (negative: it has)
    order_status: str
    result: dict[str, Any] | None


_JOB = (
    "SELECT j.id::text AS id, j.order_id::text AS order_id, j.tenant, j.attempt, j.worker, j.client_id, "
    "j.state, j.lease_expires_at, j.state = 'active' AND j.lease_expires_at > now() AS live, "
    "extract(epoch FROM j.lease_expires_at - now())::float8 AS lease_left, o.status AS order_status, "
    "j.result FROM analysis_job j JOIN orders o ON o.id = j.order_id WHERE j.id = $1"
)


async def find(conn: Connection, job_id: str, *, lock: bool = False) -> Job | None:
    """A job by id (locked for the caller's transaction with ``lock``)."""
    uid = as_uuid(job_id)
    if uid is None:
        return None
    row = await conn.fetchrow(_JOB + (" FOR UPDATE OF j" if lock else ""), uid)
    if row is None:
        return None
    fields = dict(row)
    fields["result"] = orjson.loads(fields["result"]) if fields["result"] else None
    return Job(**fields)


async def holds_lease(conn: Connection, job_id: str) -> bool:
    """Whether the job is active with its lease still running (a job token reads only then)."""
    uid = as_uuid(job_id)
    if uid is None:
        return False
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM analysis_job WHERE id = $1 AND state = 'active' "
            "AND lease_expires_at > now())",
            uid,
        )
    )


async def next_pending(conn: Connection) -> tuple[str, str, str] | None:
    """(order id, tenant, priority) of the next pending order, locked; skips locked ones."""
    require_transaction(conn)
    row = await conn.fetchrow(
        "SELECT id::text AS id, tenant, priority FROM orders WHERE status = 'pending' "
        "ORDER BY (priority = 'urgent') DESC, pending_since, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    return None if row is None else (row["id"], row["tenant"], row["priority"])


async def start(
    conn: Connection, order_id: str, tenant: str, worker: str, client_id: str, lease: float
) -> tuple[str, int, datetime]:
    """The order's attempts + 1 and the job row of this claim: (job id, attempt, lease end)."""
    require_transaction(conn)
    attempt = await conn.fetchval(
        "UPDATE orders SET attempts = attempts + 1 WHERE id = $1::uuid RETURNING attempts", order_id
    )
    row = await conn.fetchrow(
        "INSERT INTO analysis_job (order_id, tenant, attempt, worker, client_id, lease_expires_at) "
        "VALUES ($1::uuid, $2, $3, $4, $5, now() + make_interval(secs => $6)) "
        "RETURNING id::text AS id, lease_expires_at",
        order_id,
        tenant,
        attempt,
        worker,
        client_id,
        lease,
    )
    assert row is not None
    return row["id"], int(attempt), row["lease_expires_at"]


async def extend(conn: Connection, job_id: str, lease: float) -> datetime | None:
    """A live job's lease runs ``lease`` seconds from now; None when it is no longer live."""
    at: datetime | None = await conn.fetchval(
        "UPDATE analysis_job SET lease_expires_at = now() + make_interval(secs => $2) "
        "WHERE id = $1::uuid AND state = 'active' AND lease_expires_at > now() RETURNING lease_expires_at",
        job_id,
        lease,
    )
    return at


async def finish(
    conn: Connection, job_id: str, state: str, *, reason: str | None = None, result: str | None = None
) -> None:
    """An active job ends: ``completed`` (with its answer), ``failed`` or ``expired``."""
    await conn.execute(
        "UPDATE analysis_job SET state = $2, finished_at = now(), fail_reason = $3, result = $4::jsonb "
        "WHERE id = $1::uuid AND state = 'active'",
        job_id,
        state,
        reason,
        result,
    )


async def lapsed(conn: Connection, older_than_seconds: float, limit: int) -> list[tuple[str, str]]:
    """(tenant, job id) of active jobs whose lease ran out more than the grace ago (reconciler)."""
    rows = await conn.fetch(
        "SELECT tenant, id::text AS id FROM analysis_job WHERE state = 'active' "
        "AND lease_expires_at < now() - make_interval(secs => $1) ORDER BY lease_expires_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [(r["tenant"], r["id"]) for r in rows]
