"""SQL of reports (alembic 0009): the objects an analysis worker returned for one claim, and
the Encapsulated PDF instances made from them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from dicomweb_server.db.pool import Connection, as_uuid


@dataclass(frozen=True)
class StoredObject:
    """One object of a report: its key in the store, size and SHA-256."""

    key: str
    size: int
    sha256: bytes


async def create(
    conn: Connection,
    tenant: str,
    order_id: str,
    job_id: str,
    pdf: StoredObject,
    json: StoredObject,
    csv: StoredObject | None,
) -> tuple[str, datetime]:
    """A report row for one completed claim (``job_id`` is unique: a claim has one report);
    returns its id and creation time."""
    row = await conn.fetchrow(
        "INSERT INTO report (tenant, order_id, job_id, pdf_key, pdf_size, pdf_sha256, json_key, json_size, "
        "csv_key, csv_size) VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9, $10) "
        "RETURNING id::text AS id, created_at",
        tenant,
        order_id,
        job_id,
        pdf.key,
        pdf.size,
        pdf.sha256,
        json.key,
        json.size,
        csv.key if csv else None,
        csv.size if csv else None,
    )
    assert row is not None
    return row["id"], row["created_at"]


_COLUMNS = (
    "r.id::text AS id, r.tenant, r.order_id::text AS order_id, r.job_id::text AS job_id, r.pdf_key, "
    "r.pdf_size, r.json_key, r.json_size, r.csv_key, r.csv_size, r.instances, r.created_at"
)


def _row(r: Any) -> dict[str, Any]:
    row = dict(r)
    row["instances"] = (
        orjson.loads(row["instances"]) if isinstance(row["instances"], str) else row["instances"]
    )
    return row


async def get(
    conn: Connection, tenant: str, report_id: str, order_id: str | None = None
) -> dict[str, Any] | None:
    """One report of ``tenant`` (and of ``order_id`` when given); None if there is none."""
    rid, oid = as_uuid(report_id), as_uuid(order_id) if order_id is not None else None
    if rid is None or (order_id is not None and oid is None):
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM report r WHERE r.id = $1 AND r.tenant = $2 "
        "AND ($3::uuid IS NULL OR r.order_id = $3)",
        rid,
        tenant,
        oid,
    )
    return None if row is None else _row(row)


async def of_order(conn: Connection, tenant: str, order_id: str) -> list[dict[str, Any]]:
    """The reports of one order, oldest first (a retried analysis may leave more than one)."""
    oid = as_uuid(order_id)
    if oid is None:
        return []
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM report r WHERE r.order_id = $1 AND r.tenant = $2 "
        "ORDER BY r.created_at, r.id",
        oid,
        tenant,
    )
    return [_row(r) for r in rows]


async def page(
    conn: Connection,
    tenant: str,
    after: tuple[datetime, str] | None,
    created_after: datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The tenant's reports oldest first, keyset on (created_at, id) after ``after``."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM report r WHERE r.tenant = $1 "
        "AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3::uuid)) "
        "AND ($4::timestamptz IS NULL OR r.created_at > $4) ORDER BY r.created_at, r.id LIMIT $5",
        tenant,
        after[0] if after else None,
        as_uuid(after[1]) if after else None,
        created_after,
        limit,
    )
    return [_row(r) for r in rows]


async def set_instances(conn: Connection, report_id: str, instances: list[dict[str, str]]) -> None:
    """Record the Encapsulated PDF instances stored from the report (study/series/sop UIDs)."""
    await conn.execute(
        "UPDATE report SET instances = $2::jsonb WHERE id = $1::uuid",
        report_id,
        orjson.dumps(instances).decode(),
    )


async def study_attributes(conn: Connection, tenant: str, study_uid: str) -> dict[str, Any] | None:
    """The study's DICOM JSON as the index holds it (``study.attrs``), for the report instance."""
    raw = await conn.fetchval(
        "SELECT attrs::text FROM study WHERE tenant = $1 AND study_uid = $2", tenant, study_uid
    )
    if raw is None:
        return None
    value: dict[str, Any] = orjson.loads(raw)
    return value


async def undelivered(conn: Connection, older_than_seconds: float, limit: int) -> list[tuple[str, str]]:
    """(tenant, report id) of the newest report of each order still ``processing`` past the
    grace with no live claim: its delivery step died or was lost (the reconciler queues it again).
    An order claimed again (a retry) has an active claim: its old report is not delivered."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (r.order_id) r.tenant, r.id::text AS id FROM report r "
        "JOIN orders o ON o.id = r.order_id WHERE o.status = 'processing' "
        "AND NOT EXISTS (SELECT 1 FROM analysis_job j WHERE j.order_id = r.order_id AND j.state = 'active') "
        "AND r.created_at < now() - make_interval(secs => $1) "
        "ORDER BY r.order_id, r.created_at DESC LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [(r["tenant"], r["id"]) for r in rows]
