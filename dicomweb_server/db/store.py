"""Index writes for ingest: one batch of instances, its studies and series, the duplicate policy.

``store_batch(conn, ...)`` writes inside the caller's transaction, so a caller can commit other
rows with it (the ``instance.stored`` event); ``commit_batch(pool, ...)`` is the whole unit of
work, rerun by ``pool.in_transaction`` when a concurrent writer wins a race.  Studies and
series are upserted in UID order (a fixed lock order, so concurrent requests cannot deadlock on
them), instances are inserted with ``ON CONFLICT DO NOTHING`` so the unique (tenant, SOP
Instance UID) constraint applies the duplicate policy (PS3.18 §10.5.3: 0x0111 or, with
``DICOMWEB_DUPLICATE_POLICY=overwrite``, replaced in place), and the study/series aggregates
are incremented under the row locks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from dicomweb_server.db.pool import Connection, Pool, Race, in_transaction
from dicomweb_server.dicom.frames import FrameIndex
from dicomweb_server.dicom.part10 import Description, Failure
from dicomweb_server.dicom.status import DATASET_DOES_NOT_MATCH_SOP_CLASS, DUPLICATE_SOP_INSTANCE

# Index columns filled from each instance (dicom_index.index_values); types are for unnest().
STUDY_COLUMNS = {
    "study_date": "text",
    "study_time": "text",
    "accession_number": "text",
    "referring_physician": "text",
    "referring_physician_folded": "text",
    "patient_name": "text",
    "patient_name_folded": "text",
    "patient_id": "text",
    "patient_birth_date": "text",
    "patient_sex": "text",
    "study_id": "text",
    "study_description": "text",
    "timezone_offset": "text",
}
SERIES_COLUMNS = {
    "modality": "text",
    "series_number": "int",
    "series_description": "text",
    "pps_start_date": "text",
    "pps_start_time": "text",
    "scheduled_step_ids": "text[]",
    "requested_procedure_ids": "text[]",
    "timezone_offset": "text",
}
INSTANCE_COLUMNS = {
    "sop_class_uid": "text",
    "instance_number": "int",
    "rows": "int",
    "columns": "int",
    "bits_allocated": "int",
    "number_of_frames": "int",
    "transfer_syntax_uid": "text",
}


@dataclass(frozen=True)
class Record(Description):
    """One instance ready to index: its description plus the object that holds it."""

    object_key: str = ""
    size: int = 0
    sha256: bytes = b""
    frames: FrameIndex | None = None


@dataclass
class BatchOutcome:
    """What ``store_batch`` did with each record, and which objects are now unreferenced."""

    # Both keyed by the record's object key: one request may carry the same SOP Instance UID twice.
    stored: set[str] = field(
        default_factory=set
    )  # records whose instance is now indexed (new, same, replaced)
    failed: dict[str, Failure] = field(default_factory=dict)
    inserted: set[str] = field(default_factory=set)  # records whose SOP Instance UID is new to the index
    unreferenced_keys: list[str] = field(default_factory=list)  # delete after commit


def _array(sql_type: str) -> str:
    # A text[] column travels as JSON text: unnest() would flatten a 2-D array.
    return "text[]" if sql_type == "text[]" else f"{sql_type}[]"


def _select(sql_type: str, name: str) -> str:
    if sql_type == "text[]":
        return f"ARRAY(SELECT jsonb_array_elements_text(u.{name}::jsonb))"
    return f"u.{name}"


def _upsert_sql(table: str, key: str, columns: dict[str, str], parent: str | None) -> str:
    cols = ([parent] if parent else []) + [key, *columns, "attrs"]
    types = (["bigint"] if parent else []) + ["text", *columns.values(), "text"]
    params = ", ".join(f"${i + 2}::{_array(t)}" for i, t in enumerate(types))
    selects = ", ".join(
        "u.attrs::jsonb" if c == "attrs" else _select(t, c) for c, t in zip(cols, types, strict=True)
    )
    returning = f"pk, {key}" + (f", {parent}" if parent else "")
    # DO NOTHING: an existing row is not rewritten (a no-op update would leave a dead tuple per request).
    return (
        f"INSERT INTO {table} (tenant, {', '.join(cols)}) "
        f"SELECT $1, {selects} FROM unnest({params}) AS u({', '.join(cols)}) ORDER BY u.{key} "
        f"ON CONFLICT (tenant, {key}) DO NOTHING RETURNING {returning}"
    )


def _existing_sql(table: str, key: str, parent: str | None) -> str:
    returning = f"pk, {key}" + (f", {parent}" if parent else "")
    return f"SELECT {returning} FROM {table} WHERE tenant = $1 AND {key} = ANY($2::text[])"


_UPSERT_STUDIES = _upsert_sql("study", "study_uid", STUDY_COLUMNS, None)
_UPSERT_SERIES = _upsert_sql("series", "series_uid", SERIES_COLUMNS, "study_pk")
_EXISTING_STUDIES = _existing_sql("study", "study_uid", None)
_EXISTING_SERIES = _existing_sql("series", "series_uid", "study_pk")


async def _upsert(
    conn: Connection, insert: str, existing: str, key: str, tenant: str, columns: dict[str, list[Any]]
) -> tuple[list[asyncpg.Record], list[int]]:
    """Insert the new rows, read the existing ones; return all rows and the pks created here.

    The read is a separate statement so that it sees rows a concurrent transaction
    committed while our insert waited on them.
    """
    created = await conn.fetch(insert, tenant, *columns.values())
    missing = sorted(set(columns[key]) - {row[key] for row in created})
    found = await conn.fetch(existing, tenant, missing) if missing else []
    if len(found) != len(missing):
        raise Race
    return [*created, *found], [row["pk"] for row in created]


_INSTANCE_COLS = [
    "study_pk",
    "series_pk",
    "sop_uid",
    *INSTANCE_COLUMNS,
    "object_key",
    "size",
    "sha256",
    "metadata",
    "pixel_offset",
    "pixel_length",
    "fragments",
    "frame_fragments",
]
_INSTANCE_TYPES = [
    "bigint",
    "bigint",
    "text",
    *INSTANCE_COLUMNS.values(),
    "text",
    "bigint",
    "bytea",
    "text",
    "bigint",
    "bigint",
    "text",
    "text",
]
# Values that travel as JSON text (unnest() would flatten arrays of arrays), and their conversion.
_JSON_VALUES = {
    "metadata": "u.metadata::jsonb",
    "fragments": "(SELECT array_agg(x::bigint) FROM jsonb_array_elements_text(u.fragments::jsonb) x)",
    "frame_fragments": (
        "(SELECT array_agg(x::int) FROM jsonb_array_elements_text(u.frame_fragments::jsonb) x)"
    ),
}


def _value(column: str) -> str:
    return _JSON_VALUES.get(column, f"u.{column}")


_INSERT_INSTANCES = (
    f"INSERT INTO instance (tenant, {', '.join(_INSTANCE_COLS)}) "
    f"SELECT $1, {', '.join(_value(c) for c in _INSTANCE_COLS)} "
    f"FROM unnest({', '.join(f'${i + 2}::{t}[]' for i, t in enumerate(_INSTANCE_TYPES))}) "
    f"AS u({', '.join(_INSTANCE_COLS)}) ORDER BY u.sop_uid "
    "ON CONFLICT (tenant, sop_uid) DO NOTHING RETURNING object_key"
)
_OVERWRITE_COLS = [c for c in _INSTANCE_COLS if c not in ("study_pk", "series_pk", "sop_uid")]
_OVERWRITE = (
    f"UPDATE instance i SET {', '.join(f'{c} = {_value(c)}' for c in _OVERWRITE_COLS)}, "
    "created_at = now() "
    f"FROM unnest($2::text[], {', '.join(f'${i + 3}::{t}[]' for i, t in enumerate(_INSTANCE_TYPES[3:]))}) "
    f"AS u(sop_uid, {', '.join(_OVERWRITE_COLS)}) WHERE i.tenant = $1 AND i.sop_uid = u.sop_uid"
)


def _named(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> dict[str, list[Any]]:
    return {c: [row[c] for row in rows] for c in columns}


def _columns(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> list[list[Any]]:
    return [[row[c] for row in rows] for c in columns]


# Error Comments (LO, 64 characters: tests/unit/dicomweb/test_stow.py checks them).
DUPLICATE_COMMENT = "Already stored with other content; see DICOMWEB_DUPLICATE_POLICY"
OVERWRITE_REFUSED_COMMENT = "Overwrite refused: the stored instance belongs to another series"
SERIES_ELSEWHERE_COMMENT = "Series Instance UID already belongs to another study"


async def commit_batch(
    pool: Pool, tenant: str, records: Sequence[Record], *, overwrite: bool
) -> BatchOutcome:
    """``store_batch`` as its own transaction, started over on a deadlock or race (then a 503)."""
    work = functools.partial(store_batch, tenant=tenant, records=records, overwrite=overwrite)
    return await in_transaction(pool, work)


async def store_batch(
    conn: Connection, tenant: str, records: Sequence[Record], *, overwrite: bool
) -> BatchOutcome:
    """Index ``records`` in the caller's transaction and apply the duplicate policy.

    Raises ``pool.Race`` (or a deadlock) for ``in_transaction`` to start the transaction over.
    """
    out = BatchOutcome()
    studies = {r.study_uid: r for r in records}  # first instance of a study provides its attributes
    study_rows = [{"study_uid": u, **r.study, "attrs": r.study_attrs} for u, r in sorted(studies.items())]
    got, created_studies = await _upsert(
        conn,
        _UPSERT_STUDIES,
        _EXISTING_STUDIES,
        "study_uid",
        tenant,
        _named(study_rows, ["study_uid", *STUDY_COLUMNS, "attrs"]),
    )
    study_pk = {row["study_uid"]: row["pk"] for row in got}

    series = {r.series_uid: r for r in records}
    series_rows = [
        {"study_pk": study_pk[r.study_uid], "series_uid": u, **r.series, "attrs": r.series_attrs}
        for u, r in sorted(series.items())
    ]
    got, created_series = await _upsert(
        conn,
        _UPSERT_SERIES,
        _EXISTING_SERIES,
        "series_uid",
        tenant,
        _named(series_rows, ["study_pk", "series_uid", *SERIES_COLUMNS, "attrs"]),
    )
    series_pk = {row["series_uid"]: row["pk"] for row in got}
    series_study = {row["series_uid"]: row["study_pk"] for row in got}

    candidates = []
    for r in records:
        if series_study[r.series_uid] != study_pk[r.study_uid]:
            out.failed[r.object_key] = Failure(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                SERIES_ELSEWHERE_COMMENT,
                r.instance["sop_class_uid"],
                r.sop_uid,
            )
            out.unreferenced_keys.append(r.object_key)
        else:
            candidates.append(r)
    rows = [
        {
            "study_pk": study_pk[r.study_uid],
            "series_pk": series_pk[r.series_uid],
            "sop_uid": r.sop_uid,
            **r.instance,
            "object_key": r.object_key,
            "size": r.size,
            "sha256": r.sha256,
            "metadata": r.metadata,
            **_frame_values(r.frames),
        }
        for r in candidates
    ]
    inserted = {
        row["object_key"]
        for row in await conn.fetch(_INSERT_INSTANCES, tenant, *_columns(rows, _INSTANCE_COLS))
    }
    out.stored |= inserted
    out.inserted = inserted
    replaced = await _resolve_duplicates(
        conn, tenant, [r for r in candidates if r.object_key not in inserted], series_pk, overwrite, out
    )

    # Aggregates: only instances that are new to the index count.
    added: dict[int, int] = {}
    modality: dict[int, str | None] = {}
    for r in candidates:
        if r.object_key in inserted:
            pk = series_pk[r.series_uid]
            added[pk] = added.get(pk, 0) + 1
            modality[pk] = r.series.get("modality")
    await conn.execute(
        "UPDATE series s SET num_instances = s.num_instances + v.n "
        "FROM unnest($1::bigint[], $2::int[]) AS v(pk, n) WHERE s.pk = v.pk",
        list(added),
        list(added.values()),
    )
    per_study: dict[int, list[Any]] = {}
    series_of_study = {series_pk[u]: study_pk[r.study_uid] for u, r in series.items()}
    for pk, n in added.items():
        agg = per_study.setdefault(series_of_study[pk], [0, 0, set()])
        agg[0] += n
        agg[1] += pk in created_series
        if modality[pk]:
            agg[2].add(modality[pk])
    await conn.execute(
        "UPDATE study s SET num_instances = s.num_instances + v.n, num_series = s.num_series + v.new_series, "
        "modalities = ARRAY(SELECT DISTINCT m FROM unnest(s.modalities || "
        "ARRAY(SELECT jsonb_array_elements_text(v.mods::jsonb))) AS m ORDER BY m), "
        "updated_at = now() "
        "FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[]) AS v(pk, n, new_series, mods) "
        "WHERE s.pk = v.pk",
        list(per_study),
        [a[0] for a in per_study.values()],
        [a[1] for a in per_study.values()],
        [orjson.dumps(sorted(a[2])).decode() for a in per_study.values()],
    )
    # A study or series created here whose every instance failed must not linger empty.
    await conn.execute(
        "DELETE FROM series WHERE pk = ANY($1::bigint[]) AND num_instances = 0", created_series
    )
    await conn.execute(
        "DELETE FROM study WHERE pk = ANY($1::bigint[]) AND num_instances = 0", created_studies
    )
    out.unreferenced_keys += replaced
    return out


def _frame_values(index: FrameIndex | None) -> dict[str, Any]:
    index = index or FrameIndex()
    return {
        "pixel_offset": index.pixel_offset,
        "pixel_length": index.pixel_length,
        "fragments": None if index.fragments is None else orjson.dumps(index.fragments).decode(),
        "frame_fragments": None
        if index.frame_fragments is None
        else orjson.dumps(index.frame_fragments).decode(),
    }


async def _resolve_duplicates(
    conn: Connection,
    tenant: str,
    dups: list[Record],
    series_pk: dict[str, int],
    overwrite: bool,
    out: BatchOutcome,
) -> list[str]:
    """Same bytes: success.  Different bytes: 0x0111, or replaced in place when ``overwrite``."""
    if not dups:
        return []
    existing = {
        row["sop_uid"]: row
        for row in await conn.fetch(
            "SELECT sop_uid, sha256, object_key, series_pk FROM instance "
            "WHERE tenant = $1 AND sop_uid = ANY($2::text[]) FOR UPDATE",
            tenant,
            [r.sop_uid for r in dups],
        )
    }
    replace: list[Record] = []
    old_keys: list[str] = []
    for r in dups:
        row = existing.get(r.sop_uid)
        if row is not None and bytes(row["sha256"]) == r.sha256:
            out.stored.add(r.object_key)  # a retry of an instance we already hold
            out.unreferenced_keys.append(r.object_key)
        elif row is not None and overwrite and row["series_pk"] == series_pk[r.series_uid]:
            replace.append(r)
            old_keys.append(row["object_key"])
            out.stored.add(r.object_key)
        else:
            out.failed[r.object_key] = Failure(
                DUPLICATE_SOP_INSTANCE,
                DUPLICATE_COMMENT if row is None or not overwrite else OVERWRITE_REFUSED_COMMENT,
                r.instance["sop_class_uid"],
                r.sop_uid,
            )
            out.unreferenced_keys.append(r.object_key)
    if replace:
        values = [
            {
                **r.instance,
                "object_key": r.object_key,
                "size": r.size,
                "sha256": r.sha256,
                "metadata": r.metadata,
                **_frame_values(r.frames),
            }
            for r in replace
        ]
        await conn.execute(
            _OVERWRITE, tenant, [r.sop_uid for r in replace], *_columns(values, _OVERWRITE_COLS)
        )
    return old_keys
