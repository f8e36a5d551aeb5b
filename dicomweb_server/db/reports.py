"""SQL of reports (alembic 0009): the objects an analysis worker returned for one claim, and
the Encapsulated PDF instances made from them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dicomweb_server.db.pool import Connection


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
