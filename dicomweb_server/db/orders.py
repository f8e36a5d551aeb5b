"""SQL of orders, their studies and history (alembic 0009), and every status move as a
compare-and-set.

A move is checked against the lifecycle table (``lifecycle.move``) and written as
``UPDATE orders ... WHERE id = $1 AND status = $2``: of two steps racing for one order, one
wins and the other sees nothing changed.  Its history row is written with it; the caller adds
its event and follow-up step on the same connection, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from dicomweb_server.db.pool import Connection, as_uuid, require_transaction
from dicomweb_server.lifecycle import BEFORE_PROCESSING, Action, Reason, Status, move


@dataclass(frozen=True)
class Moved:
    """One order's move: for its history answer and its ``order.status_changed`` event."""

    order_id: str
    tenant: str
    source: Status | None
    target: Status
    reason: str | None


async def create(
    conn: Connection,
    tenant: str,
    studies: Sequence[str],
    *,
    source: str,
    actor: str,
    priority: str = "routine",
    external_id: str | None = None,
    note: str | None = None,
    status: Status = Status.STABLE,
    reason: Reason | None = None,
    duplicate_of: str | None = None,
    digest: str | None = None,
    idempotency_key: str | None = None,
    request_hash: bytes | None = None,
) -> Moved:
    """A new order over ``studies`` (each with its patient id, for the listing's filter)."""
    require_transaction(conn)
    move(Action.CREATE, None)  # the table has the creation moves; only their targets vary
    order_id = await conn.fetchval(
        "INSERT INTO orders (tenant, status, reason, failed_step, priority, external_id, note, source, "
        "duplicate_of, digest, idempotency_key, request_hash) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::uuid, $10::text::bit(128), $11, $12) RETURNING id::text",
        tenant,
        status.value,
        reason.value if reason else None,
        Status.STABLE.value if status == Status.FAILED else None,
        priority,
        external_id,
        note,
        source,
        duplicate_of,
        digest,
        idempotency_key,
        request_hash,
    )
    await conn.execute(
        "INSERT INTO order_study (order_id, tenant, study_uid, patient_id) "
        "SELECT $1::uuid, $2, u, (SELECT s.patient_id FROM study s WHERE s.tenant = $2 AND s.study_uid = u) "
        "FROM unnest($3::text[]) AS u",
        order_id,
        tenant,
        list(dict.fromkeys(studies)),
    )
    await _history(conn, order_id, status, reason.value if reason else None, actor)
    return Moved(order_id, tenant, None, status, reason.value if reason else None)


async def _history(conn: Connection, order_id: str, status: Status, reason: str | None, actor: str) -> None:
    await conn.execute(
        "INSERT INTO order_history (order_id, status, reason, actor) VALUES ($1::uuid, $2, $3, $4)",
        order_id,
        status.value,
        reason,
        actor,
    )


async def transition(
    conn: Connection,
    tenant: str,
    order_id: str,
    action: Action,
    actor: str,
    detail: str | None = None,
    expect: Status | None = None,
) -> Moved | None:
    """Move the order by ``action`` if the lifecycle table allows it from its status now.

    None: no such order in this tenant, or (with ``expect``) it is no longer in that status (a
    concurrent step moved it: nothing to do).  ``Refused``: the table does not allow the move.
    ``detail``: the history row's reason (a failure's own reason is the move's).
    """
    require_transaction(conn)
    uid = as_uuid(order_id)
    if uid is None:
        return None
    row = await conn.fetchrow(
        "SELECT status, reason, failed_step FROM orders WHERE id = $1 AND tenant = $2 FOR UPDATE", uid, tenant
    )
    if row is None or (expect is not None and row["status"] != expect.value):
        return None
    source = Status(row["status"])
    from_reason = Reason(row["reason"]) if row["reason"] and source == Status.FAILED else None
    m = move(action, source, from_reason)
    target = m.target
    if action == Action.RETRY and from_reason == Reason.CANCELLED and row["failed_step"]:
        target = _retry_target(Status(row["failed_step"]))
    reason = m.reason.value if m.reason else None
    await conn.execute(
        "UPDATE orders SET status = $3, reason = $4, updated_at = now(), "
        "failed_step = CASE WHEN $3 = 'failed' THEN $5 ELSE NULL END, "
        "pending_since = CASE WHEN $3 = 'pending' THEN now() ELSE pending_since END, "
        "attempts = CASE WHEN $6 THEN 0 ELSE attempts END "
        "WHERE id = $1 AND tenant = $2 AND status = $7",
        uid,
        tenant,
        target.value,
        reason,
        source.value,
        action == Action.RETRY and from_reason == Reason.ANALYSIS,
        source.value,
    )
    await _history(conn, order_id, target, detail or reason, actor)
    return Moved(order_id, tenant, source, target, reason)


def _retry_target(cancelled_from: Status) -> Status:
    """A cancelled order retried goes back to where it was, a claim's step to pending."""
    if cancelled_from == Status.PROCESSING:
        return Status.PENDING
    if cancelled_from == Status.UPLOADING:
        return Status.QC_PASSED
    return cancelled_from if cancelled_from != Status.UNSTABLE else Status.STABLE


async def regress(conn: Connection, tenant: str, studies: Sequence[str], actor: str) -> list[Moved]:
    """Late instances: every order of ``studies`` not yet processing goes back to unstable."""
    require_transaction(conn)
    if not studies:
        return []
    rows = await conn.fetch(
        "SELECT o.id::text AS id, o.status FROM orders o WHERE o.tenant = $1 AND o.status = ANY($3::text[]) "
        "AND o.id IN (SELECT order_id FROM order_study WHERE tenant = $1 AND study_uid = ANY($2::text[])) "
        "ORDER BY o.id FOR UPDATE",
        tenant,
        list(studies),
        [s.value for s in BEFORE_PROCESSING],
    )
    moved = []
    for r in rows:
        m = await transition(
            conn, tenant, r["id"], Action.REGRESS, actor, "late_instances", Status(r["status"])
        )
        if m is not None:
            moved.append(m)
    return moved


async def waiting_for(conn: Connection, tenant: str, study: str) -> list[str]:
    """Unstable orders of ``study`` whose every study is stable now (ready to settle)."""
    rows = await conn.fetch(
        "SELECT o.id::text AS id FROM orders o JOIN order_study os ON os.order_id = o.id "
        "WHERE os.tenant = $1 AND os.study_uid = $2 AND o.status = 'unstable' "
        "AND NOT EXISTS (SELECT 1 FROM order_study x LEFT JOIN arrival a ON a.tenant = x.tenant "
        " AND a.study_uid = x.study_uid WHERE x.order_id = o.id AND coalesce(a.state, 'stable') <> 'stable') "
        "ORDER BY o.id",
        tenant,
        study,
    )
    return [r["id"] for r in rows]


async def has_auto_order(conn: Connection, tenant: str, study: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM order_study os JOIN orders o ON o.id = os.order_id "
            "WHERE os.tenant = $1 AND os.study_uid = $2 AND o.source = 'auto')",
            tenant,
            study,
        )
    )


async def duplicate_of(conn: Connection, tenant: str, digest: str) -> str | None:
    """The first order of another copy of these instances (by digest) that is processing or
    delivered: a re-sent study does not start a second analysis."""
    found: str | None = await conn.fetchval(
        "SELECT o.id::text FROM orders o WHERE o.tenant = $1 AND o.digest = $2::text::bit(128) "
        "AND o.status IN ('processing', 'delivered') AND o.duplicate_of IS NULL "
        "ORDER BY o.created_at LIMIT 1",
        tenant,
        digest,
    )
    return found


async def status_of(conn: Connection, tenant: str, order_id: str) -> dict[str, Any] | None:
    uid = as_uuid(order_id)
    if uid is None:
        return None
    row = await conn.fetchrow(
        "SELECT id::text AS id, status, reason, priority, attempts FROM orders WHERE id = $1 AND tenant = $2",
        uid,
        tenant,
    )
    return None if row is None else dict(row)


async def studies_of(conn: Connection, order_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT study_uid FROM order_study WHERE order_id = $1::uuid ORDER BY study_uid", order_id
    )
    return [r["study_uid"] for r in rows]


async def orders_in(
    conn: Connection, status: Status, limit: int, older_than_seconds: float
) -> list[tuple[str, str]]:
    """(tenant, order id) of orders left in ``status`` longer than the grace (the reconciler's)."""
    rows = await conn.fetch(
        "SELECT tenant, id::text AS id FROM orders WHERE status = $1 "
        "AND updated_at < now() - make_interval(secs => $3) ORDER BY updated_at LIMIT $2",
        status.value,
        limit,
        older_than_seconds,
    )
    return [(r["tenant"], r["id"]) for r in rows]


async def instances_of(
    conn: Connection, tenant: str, studies: Sequence[str]
) -> list[tuple[str, str, int, bytes]]:
    """(SOP Instance UID, object key, size, SHA-256) of every instance of ``studies``."""
    rows = await conn.fetch(
        "SELECT i.sop_uid, i.object_key, i.size, i.sha256 FROM instance i JOIN study s ON s.pk = i.study_pk "
        "WHERE s.tenant = $1 AND s.study_uid = ANY($2::text[]) ORDER BY i.pk",
        tenant,
        list(studies),
    )
    return [(r["sop_uid"], r["object_key"], r["size"], bytes(r["sha256"])) for r in rows]


async def expected_counts(
    conn: Connection, tenant: str, studies: Sequence[str]
) -> dict[str, tuple[int | None, int | None, int, int]]:
    """Per study: (expected instances, expected series) as committed, and what the index has."""
    rows = await conn.fetch(
        "SELECT a.study_uid, a.expected_instances, a.expected_series, coalesce(s.num_instances, 0) AS i, "
        "coalesce(s.num_series, 0) AS n FROM arrival a LEFT JOIN study s ON s.tenant = a.tenant "
        "AND s.study_uid = a.study_uid WHERE a.tenant = $1 AND a.study_uid = ANY($2::text[])",
        tenant,
        list(studies),
    )
    return {r["study_uid"]: (r["expected_instances"], r["expected_series"], r["i"], r["n"]) for r in rows}


async def set_qc(conn: Connection, order_id: str, result_json: str) -> None:
    await conn.execute("UPDATE orders SET qc = $2::jsonb WHERE id = $1::uuid", order_id, result_json)


async def by_key(conn: Connection, tenant: str, key: str) -> tuple[str, bytes | None] | None:
    """(order id, request hash) of the order an ``Idempotency-Key`` created (orders_idempotency)."""
    row = await conn.fetchrow(
        "SELECT id::text AS id, request_hash FROM orders WHERE tenant = $1 AND idempotency_key = $2",
        tenant,
        key,
    )
    return (
        None
        if row is None
        else (row["id"], None if row["request_hash"] is None else bytes(row["request_hash"]))
    )


async def create_keyed(conn: Connection, tenant: str, studies: Sequence[str], **fields: Any) -> Moved | None:
    """``create`` inside a savepoint: None when a concurrent request took the same
    ``idempotency_key`` first (the unique constraint ``orders_idempotency``); the caller's
    transaction goes on and re-reads that order (its row is committed and visible now)."""
    require_transaction(conn)
    try:
        async with conn.transaction():
            return await create(conn, tenant, studies, **fields)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "orders_idempotency":
            raise
        return None


async def withdraw_jobs(conn: Connection, order_id: str) -> int:
    """A cancelled order's live claim is withdrawn: the worker's heartbeat and result are refused."""
    status = await conn.execute(
        "UPDATE analysis_job SET state = 'withdrawn', finished_at = now() "
        "WHERE order_id = $1::uuid AND state = 'active'",
        order_id,
    )
    return int(status.split()[-1])


async def newest_report(conn: Connection, order_id: str) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT id::text FROM report WHERE order_id = $1::uuid ORDER BY created_at DESC, id DESC LIMIT 1",
        order_id,
    )
    return found
