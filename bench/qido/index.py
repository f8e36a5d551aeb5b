"""The 1M scenario's direct load into our index (and the table state and VACUUM around it).

The load writes into the real schema of the running ``ours`` target's embedded PostgreSQL (unix
socket under ``<data dir>/pg``): rows are produced exactly as ingest would store them
(bench/qido/rows.py checks that against the ingest code first) and streamed with binary COPY.
Bulk-load practice, with the schema left as migrated: the instance table's secondary indexes and
unique constraints are dropped before the COPY and rebuilt from their saved definitions after it
(then compared with the originals), and foreign-key triggers are off for the loading session only
(``session_replication_role = replica``; every reference is consistent by construction). Then
VACUUM ANALYZE and a CHECKPOINT, so the queries run on a settled database.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.corpus.population import Population
from bench.qido.measure import LoadStats
from bench.qido.rows import Rows, check_against_ingest

COPY_STREAMS = 2


def ours_dsn(workdir: Path) -> str:
    """The ours target's embedded PostgreSQL: its socket directory is line 5 of postmaster.pid."""
    pgdata = workdir / "data" / "pg"
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else str(pgdata)
    return f"postgresql://postgres:@/postgres?host={socket_dir}"


async def _instance_index_defs(
    conn: asyncpg.Connection,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(unique constraints, plain indexes) of the instance table, as (name, definition)."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'instance'::regclass AND contype = 'u' ORDER BY conname"
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename = 'instance' AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = 'instance'::regclass) ORDER BY indexname"
    )
    return [(r["conname"], r["def"]) for r in constraints], [(r["indexname"], r["indexdef"]) for r in indexes]


async def _all_index_defs(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename IN ('study', 'series', 'instance') ORDER BY indexname"
    )
    return [(r["indexname"], r["indexdef"]) for r in rows]


async def bulk_load(dsn: str, pop: Population) -> LoadStats:
    check_against_ingest(pop)
    conn = await asyncpg.connect(dsn)
    steps: dict[str, float] = {}
    started = time.perf_counter()
    try:
        existing = await conn.fetchval("SELECT count(*) FROM instance")
        if existing:
            raise RuntimeError(
                f"the index already holds {existing} instances; the 1M load needs a fresh target"
            )
        before = await _all_index_defs(conn)
        await conn.execute("SET session_replication_role = replica")  # FK triggers off, this session only
        await conn.execute("SET maintenance_work_mem = '1GB'")
        constraints, indexes = await _instance_index_defs(conn)
        for name, _ in constraints:
            await conn.execute(f"ALTER TABLE instance DROP CONSTRAINT {name}")
        for name, _ in indexes:
            await conn.execute(f"DROP INDEX {name}")

        # Two COPY streams (two backends) over halves of the studies: PostgreSQL's side (jsonb input,
        # compression, WAL) is the bottleneck, and this machine has two cores.
        parts = [Rows(pop, len(pop.studies) * k // COPY_STREAMS, len(pop.studies) * (k + 1) // COPY_STREAMS)
                 for k in range(COPY_STREAMS)]  # fmt: skip
        extra = [await asyncpg.connect(dsn) for _ in parts[1:]]
        try:
            for c in extra:
                await c.execute("SET session_replication_role = replica")
            t = time.perf_counter()
            await asyncio.gather(
                *(
                    c.copy_records_to_table("instance", records=r.instances(), columns=r.instance_cols)
                    for c, r in zip([conn, *extra], parts, strict=True)
                )
            )
            steps["COPY instances"] = time.perf_counter() - t
        finally:
            for c in extra:
                await c.close()
        t = time.perf_counter()
        cols = parts[0]
        await conn.copy_records_to_table(
            "study", records=[row for r in parts for row in r.studies], columns=cols.study_cols
        )
        await conn.copy_records_to_table(
            "series", records=[row for r in parts for row in r.series], columns=cols.series_cols
        )
        for table in ("study", "series", "instance"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), (SELECT max(pk) FROM {table}))"
            )
        steps["COPY studies+series"] = time.perf_counter() - t

        t = time.perf_counter()
        for name, definition in constraints:
            await conn.execute(f"ALTER TABLE instance ADD CONSTRAINT {name} {definition}")
        for _, definition in indexes:
            await conn.execute(definition)
        steps["rebuild instance indexes"] = time.perf_counter() - t
        after = await _all_index_defs(conn)
        if after != before:
            raise RuntimeError(f"index definitions changed by the load: {sorted(set(before) ^ set(after))}")
        await conn.execute("RESET session_replication_role")

        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE study, series, instance")
        steps["VACUUM ANALYZE"] = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute("CHECKPOINT")
        steps["CHECKPOINT"] = time.perf_counter() - t
        sizes: Any = await conn.fetchrow(
            "SELECT pg_total_relation_size('instance') AS inst, pg_total_relation_size('study') AS st, "
            "pg_total_relation_size('series') AS se, "
            "(SELECT avg(pg_column_size(metadata)) FROM (SELECT metadata FROM instance LIMIT 1000) m) "
            "AS meta, (SELECT avg(octet_length(metadata::text)) "
            "FROM (SELECT metadata FROM instance LIMIT 1000) m) AS text"
        )
        counts: Any = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM study) AS st, (SELECT count(*) FROM series) AS se, "
            "(SELECT count(*) FROM instance) AS i"
        )
    finally:
        await conn.close()
    if (counts["st"], counts["se"], counts["i"]) != (len(pop.studies), pop.series_count, pop.instance_count):
        raise RuntimeError(f"loaded counts {dict(counts)} differ from the model")
    notes = [
        f"instance table + indexes {sizes['inst'] / 2**30:.2f} GiB, study {sizes['st'] / 2**20:.0f} MiB, "
        f"series {sizes['se'] / 2**20:.0f} MiB; metadata {sizes['text']:.0f} B as JSON text, "
        f"{sizes['meta']:.0f} B stored (jsonb)",
    ]
    return LoadStats(
        "direct binary COPY into the index (asyncpg), indexes rebuilt",
        pop.instance_count,
        time.perf_counter() - started,
        steps,
        notes,
    )


async def table_state(dsn: str) -> str:
    """Live/dead tuples and whether the planner has statistics yet, per index table."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_live_tup, n_dead_tup, "
            "coalesce(last_analyze, last_autoanalyze) IS NOT NULL AS analyzed "
            "FROM pg_stat_user_tables WHERE relname IN ('study', 'series', 'instance') ORDER BY relname"
        )
    finally:
        await conn.close()
    return ", ".join(
        f"{r['relname']} {r['n_live_tup']} live / {r['n_dead_tup']} dead, "
        f"{'analyzed' if r['analyzed'] else 'never analyzed'}"
        for r in rows
    )


async def vacuum_analyze(dsn: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE study, series, instance")
        return time.perf_counter() - t
    finally:
        await conn.close()
