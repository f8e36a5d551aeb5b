"""Index reads for WADO-RS (PS3.18 §10.4): where a resource's instances are, and their metadata.

A resource is a study, a series of it or an instance of that series; ``resource_scope`` is the
one WHERE clause for all three (DELETE uses it too).  Functions take a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from dicomweb_server.db.pool import Connection
from dicomweb_server.dicom.frames import FrameIndex


@dataclass(frozen=True)
class StoredInstance:
    """One instance as WADO-RS needs it: where its object is and where its frames lie."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    object_key: str
    size: int
    transfer_syntax_uid: str
    sha256: bytes
    number_of_frames: int | None
    frames: FrameIndex
    metadata: str | None = None  # DICOM JSON text, when asked for


def resource_scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> tuple[str, list[str]]:
    """WHERE clause and arguments ($2...) for a study, series or instance resource."""
    clause, args = "st.study_uid = $2", [study_uid]
    if series_uid is not None:
        args.append(series_uid)
        clause += f" AND se.series_uid = ${len(args) + 1}"
    if sop_uid is not None:
        args.append(sop_uid)
        clause += f" AND i.sop_uid = ${len(args) + 1}"
    return clause, args


_RESOURCE = (
    "FROM study st JOIN instance i ON i.study_pk = st.pk JOIN series se ON se.pk = i.series_pk "
    "WHERE st.tenant = $1 AND {scope}"
)
_INSTANCE_FIELDS = (
    "st.study_uid, se.series_uid, i.sop_uid, i.sop_class_uid, i.object_key, i.size, i.transfer_syntax_uid, "
    "i.sha256, i.number_of_frames, i.pixel_offset, i.pixel_length, i.fragments, i.frame_fragments"
)


def _stored(row: asyncpg.Record, metadata: str | None = None) -> StoredInstance:
    return StoredInstance(
        row["study_uid"],
        row["series_uid"],
        row["sop_uid"],
        row["sop_class_uid"],
        row["object_key"],
        row["size"],
        row["transfer_syntax_uid"],
        bytes(row["sha256"]),
        row["number_of_frames"],
        FrameIndex(row["pixel_offset"], row["pixel_length"], row["fragments"], row["frame_fragments"]),
        metadata,
    )


async def find_instances(
    conn: Connection, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredInstance]:
    """The instances of a study, series or instance resource, series by series in ingest order."""
    scope, args = resource_scope(study_uid, series_uid, sop_uid)
    rows = await conn.fetch(
        f"SELECT {_INSTANCE_FIELDS} {_RESOURCE.format(scope=scope)} ORDER BY i.series_pk, i.pk",
        tenant,
        *args,
    )
    return [_stored(row) for row in rows]


async def find_instance(
    conn: Connection, tenant: str, study_uid: str, series_uid: str, sop_uid: str, *, metadata: bool = False
) -> StoredInstance | None:
    scope, args = resource_scope(study_uid, series_uid, sop_uid)
    fields = _INSTANCE_FIELDS + (", i.metadata::text AS metadata" if metadata else "")
    row = await conn.fetchrow(f"SELECT {fields} {_RESOURCE.format(scope=scope)}", tenant, *args)
    return None if row is None else _stored(row, row["metadata"] if metadata else None)


async def metadata(
    conn: Connection, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> str | None:
    """The DICOM JSON of every instance of a resource as one JSON array text, or None if there is none.

    Built at ingest and joined by PostgreSQL: no object is read and no JSON is parsed here.
    """
    scope, args = resource_scope(study_uid, series_uid, sop_uid)
    joined: str | None = await conn.fetchval(
        f"SELECT string_agg(i.metadata::text, ',' ORDER BY i.series_pk, i.pk) "
        f"{_RESOURCE.format(scope=scope)}",
        tenant,
        *args,
    )
    return None if joined is None else f"[{joined}]"
