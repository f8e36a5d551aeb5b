"""All SQL, over asyncpg.  Plain async functions taking a pool or a connection.

Ingest commits one transaction per STOW request (``store_batch``): studies and
series are upserted in UID order (a fixed lock order, so concurrent requests
cannot deadlock on them), instances are inserted with ``ON CONFLICT DO NOTHING``
so the unique (tenant, SOP Instance UID) constraint applies the duplicate
policy, and the study/series aggregates are incremented under the row locks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
import orjson

from dicomweb_server.db.search import Statements
from dicomweb_server.dicom.frames import FrameIndex
from dicomweb_server.dicom.part10 import Description, Failure
from dicomweb_server.dicom.status import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
)
from dicomweb_server.errors import ServiceUnavailable

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


class _Retry(Exception):
    """A row another transaction was creating disappeared before we could read it: start over."""


async def _upsert(
    conn: asyncpg.Connection, insert: str, existing: str, key: str, tenant: str, columns: dict[str, list[Any]]
) -> tuple[list[asyncpg.Record], list[int]]:
    """Insert the new rows, read the existing ones; return all rows and the pks created here.

    The read is a separate statement so that it sees rows a concurrent transaction
    committed while our insert waited on them.
    """
    created = await conn.fetch(insert, tenant, *columns.values())
    missing = sorted(set(columns[key]) - {row[key] for row in created})
    found = await conn.fetch(existing, tenant, missing) if missing else []
    if len(found) != len(missing):
        raise _Retry
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


async def create_pool(url: str, size: int) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            command_timeout=60,
            # Statements are prepared once per connection; a generic plan chosen after five runs
            # can ignore the selectivity of this run's values (54 ms instead of 0.1 ms measured),
            # and JIT compilation costs more than it saves on index-sized queries.
            server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off"},
        )
    except (OSError, asyncpg.PostgresError):
        raise ServiceUnavailable("The database is unavailable; try again later") from None


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; losing the database becomes a 503, never a 500."""
    try:
        async with pool.acquire() as conn:
            yield cast(asyncpg.Connection, conn)
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
        raise ServiceUnavailable("The database is unavailable; try again later") from None


async def ping(pool: asyncpg.Pool) -> None:
    async with connection(pool) as conn:
        await conn.fetchval("SELECT 1")


def _named(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> dict[str, list[Any]]:
    return {c: [row[c] for row in rows] for c in columns}


def _columns(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> list[list[Any]]:
    return [[row[c] for row in rows] for c in columns]


# Error Comments (LO, 64 characters: tests/unit/test_stow_response.py checks them).
DUPLICATE_COMMENT = "Already stored with other content; see DICOMWEB_DUPLICATE_POLICY"
OVERWRITE_REFUSED_COMMENT = "Overwrite refused: the stored instance belongs to another series"
SERIES_ELSEWHERE_COMMENT = "Series Instance UID already belongs to another study"


async def store_batch(
    pool: asyncpg.Pool, tenant: str, records: Sequence[Record], *, overwrite: bool
) -> BatchOutcome:
    """Index ``records`` in one transaction and apply the duplicate policy; retried on deadlock."""
    for attempt in range(3):
        try:
            async with connection(pool) as conn, conn.transaction():
                return await _store_batch(conn, tenant, records, overwrite)
        except (
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
            asyncpg.ForeignKeyViolationError,
            _Retry,
        ):
            # A foreign key violation: a concurrent DELETE removed the study or series we joined.
            if attempt == 2:
                raise ServiceUnavailable("index busy, please retry") from None
    raise AssertionError("unreachable")


async def _store_batch(
    conn: asyncpg.Connection, tenant: str, records: Sequence[Record], overwrite: bool
) -> BatchOutcome:
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
    conn: asyncpg.Connection,
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


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> tuple[str, list[str]]:
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
    pool: asyncpg.Pool, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredInstance]:
    """The instances of a study, series or instance resource, series by series in ingest order."""
    scope, args = _scope(study_uid, series_uid, sop_uid)
    async with connection(pool) as conn:
        rows = await conn.fetch(
            f"SELECT {_INSTANCE_FIELDS} {_RESOURCE.format(scope=scope)} ORDER BY i.series_pk, i.pk",
            tenant,
            *args,
        )
    return [_stored(row) for row in rows]


async def find_instance(
    pool: asyncpg.Pool, tenant: str, study_uid: str, series_uid: str, sop_uid: str, *, metadata: bool = False
) -> StoredInstance | None:
    scope, args = _scope(study_uid, series_uid, sop_uid)
    fields = _INSTANCE_FIELDS + (", i.metadata::text AS metadata" if metadata else "")
    async with connection(pool) as conn:
        row = await conn.fetchrow(f"SELECT {fields} {_RESOURCE.format(scope=scope)}", tenant, *args)
    return None if row is None else _stored(row, row["metadata"] if metadata else None)


async def metadata(
    pool: asyncpg.Pool, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> str | None:
    """The DICOM JSON of every instance of a resource as one JSON array text, or None if there is none.

    Built at ingest and joined by PostgreSQL: no object is read and no JSON is parsed here.
    """
    scope, args = _scope(study_uid, series_uid, sop_uid)
    async with connection(pool) as conn:
        joined: str | None = await conn.fetchval(
            f"SELECT string_agg(i.metadata::text, ',' ORDER BY i.series_pk, i.pk) "
            f"{_RESOURCE.format(scope=scope)}",
            tenant,
            *args,
        )
    return None if joined is None else f"[{joined}]"


async def delete(
    pool: asyncpg.Pool, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[str] | None:
    """Remove a study, series or instance from the index in one transaction.

    Returns the object keys that are no longer referenced (the caller deletes them
    after this commits; the sweep removes any a crash leaves behind), or None when
    the resource does not exist.  The study row is locked first, the same order as
    ingest, and the aggregates are brought down under that lock.
    """
    scope, args = _scope(study_uid, series_uid, sop_uid)
    async with connection(pool) as conn, conn.transaction():
        study_pk = await conn.fetchval(
            "SELECT pk FROM study WHERE tenant = $1 AND study_uid = $2 FOR UPDATE", tenant, study_uid
        )
        if study_pk is None:
            return None
        rows = await conn.fetch(
            f"DELETE FROM instance i USING study st, series se WHERE st.pk = i.study_pk "
            f"AND se.pk = i.series_pk AND st.tenant = $1 AND {scope} RETURNING i.object_key, i.series_pk",
            tenant,
            *args,
        )
        if not rows:
            return None
        removed: dict[int, int] = {}
        for row in rows:
            removed[row["series_pk"]] = removed.get(row["series_pk"], 0) + 1
        await conn.execute(
            "UPDATE series s SET num_instances = s.num_instances - v.n "
            "FROM unnest($1::bigint[], $2::int[]) AS v(pk, n) WHERE s.pk = v.pk",
            list(removed),
            list(removed.values()),
        )
        await conn.execute("DELETE FROM series WHERE study_pk = $1 AND num_instances <= 0", study_pk)
        await conn.execute(
            "UPDATE study s SET num_instances = s.num_instances - $2, "
            "num_series = (SELECT count(*) FROM series WHERE study_pk = s.pk), "
            "modalities = ARRAY(SELECT DISTINCT modality FROM series "
            "WHERE study_pk = s.pk AND modality IS NOT NULL ORDER BY modality), updated_at = now() "
            "WHERE s.pk = $1",
            study_pk,
            len(rows),
        )
        await conn.execute("DELETE FROM study WHERE pk = $1 AND num_instances <= 0", study_pk)
    return [row["object_key"] for row in rows]


async def referenced_keys(pool: asyncpg.Pool, keys: Sequence[str]) -> set[str]:
    """The subset of ``keys`` that a committed instance row references."""
    async with connection(pool) as conn:
        rows = await conn.fetch(
            "SELECT object_key FROM instance WHERE object_key = ANY($1::text[])", list(keys)
        )
    return {row["object_key"] for row in rows}


async def search_page(
    pool: asyncpg.Pool, statements: Statements, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A QIDO page, and the total count when more rows remain than the page holds."""
    async with connection(pool) as conn:
        rows = await conn.fetch(statements.page, *statements.page_args)
        total = None
        if len(rows) > limit:
            rows = rows[:limit]
            total = await conn.fetchval(statements.count, *statements.count_args)
    return [dict(r) for r in rows], total


_INDEX_TABLES = ("study", "series", "instance")


async def analyze_if_stale(pool: asyncpg.Pool) -> list[str]:
    """ANALYZE the index tables whose statistics lag far behind their contents.

    Autovacuum looks at a database once a minute; a bulk ingest followed by searches
    inside that minute would otherwise be planned with no statistics at all.
    """
    async with connection(pool) as conn:
        stale = await conn.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) "
            "AND n_mod_since_analyze > 500 + 0.1 * n_live_tup",
            list(_INDEX_TABLES),
        )
        names = [row["relname"] for row in stale if row["relname"] in _INDEX_TABLES]
        for name in names:
            await conn.execute(f"ANALYZE {name}")  # a name from the fixed list above
    return names


# -- access: tenants, clients, audit ---------------------------------------------------------


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


async def create_tenant(pool: asyncpg.Pool, tenant: str, name: str) -> bool:
    """False when the tenant already exists."""
    async with connection(pool) as conn:
        status = await conn.execute(
            "INSERT INTO tenant (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", tenant, name
        )
    return bool(status.endswith(" 1"))


async def tenant_enabled(pool: asyncpg.Pool, tenant: str) -> bool:
    async with connection(pool) as conn:
        return bool(await conn.fetchval("SELECT NOT disabled FROM tenant WHERE id = $1", tenant))


async def list_tenants(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    async with connection(pool) as conn:
        rows = await conn.fetch("SELECT id, name, disabled, created_at FROM tenant ORDER BY id")
    return [dict(r) for r in rows]


async def create_client(
    pool: asyncpg.Pool,
    client_id: str,
    tenant: str,
    name: str,
    scopes: Iterable[str],
    secret_hash: str,
    rate_requests: int | None = None,
    rate_bytes: int | None = None,
) -> None:
    async with connection(pool) as conn, conn.transaction():
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


async def find_client(pool: asyncpg.Pool, client_id: str) -> ClientRecord | None:
    """The client, or None; an id the table could never hold (a NUL, say) is not looked up."""
    if not 1 <= len(client_id) <= 64 or not _CLIENT_ID_CHARS.issuperset(client_id):
        return None
    async with connection(pool) as conn:
        row = await conn.fetchrow(_CLIENT + " WHERE c.client_id = $1", client_id)
    return None if row is None else _client(row)


async def list_clients(pool: asyncpg.Pool, tenant: str | None = None) -> list[ClientRecord]:
    async with connection(pool) as conn:
        rows = await conn.fetch(
            _CLIENT + " WHERE $1::text IS NULL OR c.tenant = $1 ORDER BY c.client_id", tenant
        )
    return [_client(r) for r in rows]


async def rotate_secret(pool: asyncpg.Pool, client_id: str, secret_hash: str, overlap_seconds: int) -> bool:
    """Add a secret; the current one stays valid for ``overlap_seconds``, any older one ends now."""
    async with connection(pool) as conn, conn.transaction():
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


async def set_client_disabled(pool: asyncpg.Pool, client_id: str, disabled: bool) -> bool:
    async with connection(pool) as conn:
        status = await conn.execute(
            "UPDATE client SET disabled = $2 WHERE client_id = $1", client_id, disabled
        )
    return bool(status.endswith(" 1"))


AUDIT_COLUMNS = (
    "at", "tenant", "client_id", "event_id", "event", "action", "transaction", "study_uid", "status",
    "outcome", "request_id",
)  # fmt: skip


async def append_audit(pool: asyncpg.Pool, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append audit rows (tuples in AUDIT_COLUMNS order) in one round trip."""
    async with connection(pool) as conn:
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
    pool: asyncpg.Pool, tenant: str | None, *, limit: int = 100, **filters: Any
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
    async with connection(pool) as conn:
        rows = await conn.fetch(
            f"SELECT pk, {', '.join(AUDIT_COLUMNS)} FROM audit {where}ORDER BY pk DESC LIMIT ${len(args)}",
            *args,
        )
    return [dict(r) for r in rows]
