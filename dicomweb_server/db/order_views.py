"""SQL of the orders API's reads (alembic 0009): the listing with its filters and keyset
paging, an order's detail, a study's orders, and the stored studies' states for a new order.

Each filter is one condition served by an index of migration 0009; values are always ``$n``
parameters; pages are keyset (``(created_at, id) < (...)``), never OFFSET, never a count, so a
page costs the same at a million orders (docs/bench-runs: the orders suite's EXPLAINs).
The moves themselves are db/orders.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from dicomweb_server.db.pool import Connection, as_uuid


async def of_study(conn: Connection, tenant: str, study: str) -> list[dict[str, Any]]:
    """The orders carrying ``study``, newest first."""
    rows = await conn.fetch(
        "SELECT o.id::text AS id, o.status, o.reason, o.created_at FROM order_study os "
        "JOIN orders o ON o.id = os.order_id WHERE os.tenant = $1 AND os.study_uid = $2 "
        "ORDER BY o.created_at DESC, o.id DESC",
        tenant,
        study,
    )
    return [dict(r) for r in rows]


# -- the orders API (issue #12 §2): idempotent creation, the keyset listing, the detail ---------


async def study_states(conn: Connection, tenant: str, studies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per requested study that is stored in ``tenant``: whether a session carries it now and its
    arrival state (none for a study indexed before arrival rows existed: it is stable)."""
    rows = await conn.fetch(
        "SELECT s.study_uid, (a.open_sessions > 0 AND a.open_until > now()) AS receiving, a.state "
        "FROM study s LEFT JOIN arrival a ON a.tenant = s.tenant AND a.study_uid = s.study_uid "
        "WHERE s.tenant = $1 AND s.study_uid = ANY($2::text[]) AND s.num_instances > 0",
        tenant,
        list(studies),
    )
    return {r["study_uid"]: {"receiving": bool(r["receiving"]), "state": r["state"]} for r in rows}


@dataclass(frozen=True)
class Filters:
    """The listing's filters; each given one is one condition served by an index of 0009."""

    status: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    external_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


_SUMMARY = (
    "o.id::text AS id, o.status, o.reason, o.priority, o.external_id, o.note, o.source, "
    "o.duplicate_of::text AS duplicate_of, o.created_at, o.updated_at"
)


async def list_orders(
    conn: Connection, tenant: str, f: Filters, after: tuple[datetime, UUID] | None, limit: int
) -> list[dict[str, Any]]:
    """One page, newest first by (created_at, id), from the keyset ``after``: the matching index
    (orders_created_idx, orders_status_idx, orders_external_idx; a study or a patient through
    order_study_study_idx / order_study_patient_idx) is read in order and stops after ``limit``
    rows, whatever the table's size: no OFFSET, no count."""
    where = ["o.tenant = $1"]
    args: list[Any] = [tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.status is not None:
        where.append(f"o.status = {arg(f.status)}")
    if f.external_id is not None:
        where.append(f"o.external_id = {arg(f.external_id)}")
    if f.study_uid is not None:
        where.append(
            f"o.id IN (SELECT order_id FROM order_study WHERE tenant = $1 AND study_uid = {arg(f.study_uid)})"
        )
    if f.patient_id is not None:
        where.append(
            "o.id IN (SELECT order_id FROM order_study WHERE tenant = $1 "
            f"AND patient_id = {arg(f.patient_id)})"
        )
    if f.created_after is not None:
        where.append(f"o.created_at > {arg(f.created_after)}")
    if f.created_before is not None:
        where.append(f"o.created_at < {arg(f.created_before)}")
    if after is not None:
        where.append(f"(o.created_at, o.id) < ({arg(after[0])}, {arg(after[1])})")
    rows = await conn.fetch(
        f"SELECT {_SUMMARY} FROM orders o WHERE {' AND '.join(where)} "
        f"ORDER BY o.created_at DESC, o.id DESC LIMIT {arg(limit)}",
        *args,
    )
    found = [dict(r) for r in rows]
    studies = await conn.fetch(
        "SELECT order_id::text AS id, study_uid FROM order_study WHERE order_id = ANY($1::uuid[]) "
        "ORDER BY order_id, study_uid",
        [r["id"] for r in found],
    )
    by_order: dict[str, list[str]] = {}
    for s in studies:
        by_order.setdefault(s["id"], []).append(s["study_uid"])
    for r in found:
        r["studies"] = by_order.get(r["id"], [])
    return found


async def detail(conn: Connection, tenant: str, order_id: str) -> dict[str, Any] | None:
    """The order with its studies (their index attributes and own status), history and reports."""
    uid = as_uuid(order_id)
    if uid is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {_SUMMARY}, o.attempts, o.qc::text AS qc FROM orders o WHERE o.id = $1 AND o.tenant = $2",
        uid,
        tenant,
    )
    if row is None:
        return None
    found = dict(row)
    found["study_rows"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT os.study_uid, coalesce(s.patient_id, os.patient_id) AS patient_id, s.patient_name, "
            "s.study_date, s.study_time, s.modalities, s.num_series AS series, s.num_instances AS instances, "
            "s.study_description, (a.open_sessions > 0 AND a.open_until > now()) AS receiving, a.state, "
            "(SELECT o2.status FROM order_study x JOIN orders o2 ON o2.id = x.order_id "
            " WHERE x.tenant = os.tenant AND x.study_uid = os.study_uid "
            " ORDER BY o2.created_at DESC, o2.id DESC LIMIT 1) AS order_status "
            "FROM order_study os LEFT JOIN study s ON s.tenant = os.tenant AND s.study_uid = os.study_uid "
            "LEFT JOIN arrival a ON a.tenant = os.tenant AND a.study_uid = os.study_uid "
            "WHERE os.order_id = $1 ORDER BY os.study_uid",
            uid,
        )
    ]
    found["history"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT status, at, reason, actor FROM order_history WHERE order_id = $1 ORDER BY pk", uid
        )
    ]
    found["reports"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT id::text AS id, created_at FROM report WHERE order_id = $1 ORDER BY created_at, id", uid
        )
    ]
    return found
