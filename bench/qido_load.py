"""The 1M scenario's direct load into our index, and EXPLAIN (ANALYZE, BUFFERS) of each query type.

The load writes into the real schema of the running ``ours`` target's embedded PostgreSQL (unix
socket under ``<data dir>/pg``): rows are produced exactly as ingest would store them
(bench/qido_corpus.py checks that against the ingest code first) and streamed with binary COPY.
Bulk-load practice, with the schema left as migrated: the instance table's secondary indexes and
unique constraints are dropped before the COPY and rebuilt from their saved definitions after it
(then compared with the originals), and foreign-key triggers are off for the loading session only
(``session_replication_role = replica``; every reference is consistent by construction). Then
VACUUM ANALYZE and a CHECKPOINT, so the queries run on a settled database.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from bench.qido_corpus import Population, StudyRows, check_against_ingest

if TYPE_CHECKING:
    from bench.qido import Probe, QidoDetail

TENANT = "dev"  # the tenant of the dev client whose token the harness uses (dicomweb_server.access.admin)
TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"
COPY_STREAMS = 2


def ours_dsn(workdir: Path) -> str:
    """The ours target's embedded PostgreSQL: its socket directory is line 5 of postmaster.pid."""
    pgdata = workdir / "data" / "pg"
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else str(pgdata)
    return f"postgresql://postgres:@/postgres?host={socket_dir}"


def _columns() -> tuple[list[str], list[str], list[str]]:
    from dicomweb_server.db import store as db

    study = [
        "pk",
        "tenant",
        "study_uid",
        *db.STUDY_COLUMNS,
        "modalities",
        "num_series",
        "num_instances",
        "attrs",
    ]
    series = ["pk", "tenant", "study_pk", "series_uid", *db.SERIES_COLUMNS, "num_instances", "attrs"]
    instance = [
        "pk", "tenant", "study_pk", "series_pk", "sop_uid", *db.INSTANCE_COLUMNS,
        "object_key", "size", "sha256", "metadata",
    ]  # fmt: skip
    return study, series, instance


def _value(values: dict[str, Any], column: str, sql_type: str) -> Any:
    value = values[column]
    if sql_type == "text[]":  # index_values gives JSON text for array columns; COPY wants a list
        return orjson.loads(value) if isinstance(value, str) else value
    return value


class Rows:
    """Instance rows of studies ``[start, stop)``; the study and series rows are collected meanwhile."""

    def __init__(self, pop: Population, start: int = 0, stop: int | None = None) -> None:
        self.pop = pop
        self.start, self.stop = start, len(pop.studies) if stop is None else stop
        before = pop.studies[:start]
        self.first_series_pk = sum(len(s.series) for s in before)
        self.first_instance_pk = sum(s.instances for s in before)
        self.studies: list[tuple[Any, ...]] = []
        self.series: list[tuple[Any, ...]] = []
        self.study_cols, self.series_cols, self.instance_cols = _columns()

    def instances(self) -> Iterator[tuple[Any, ...]]:
        from dicomweb_server.db import store as db

        keys = random.Random(f"{self.pop.spec.seed}/{self.start}")
        dumps, sha = orjson.dumps, hashlib.sha256
        instance_pk, series_pk = self.first_instance_pk, self.first_series_pk
        for study in self.pop.studies[self.start : self.stop]:
            rows = StudyRows(study)
            study_pk = study.index + 1
            sv = rows.study_values
            self.studies.append(
                (
                    study_pk, TENANT, study.uid,
                    *(_value(sv, c, t) for c, t in db.STUDY_COLUMNS.items()),
                    study.modalities, len(study.series), study.instances, rows.study_attrs,
                )
            )  # fmt: skip
            bucket = f"{TENANT}/{study.date}/{study.time[:4]}/"
            for series, sj in zip(study.series, rows.series_json, strict=True):
                series_pk += 1
                se = rows.series_values[series.index]
                self.series.append(
                    (
                        series_pk, TENANT, study_pk, series.uid,
                        *(_value(se, c, t) for c, t in db.SERIES_COLUMNS.items()),
                        series.instances, rows.series_attrs[series.index],
                    )
                )  # fmt: skip
                const = rows.instance_values(series, 0)
                for i in range(series.instances):
                    instance_pk += 1
                    meta = sj.instance(i)
                    key = f"{bucket}{keys.getrandbits(128):032x}"
                    yield (
                        instance_pk, TENANT, study_pk, series_pk, meta["00080018"]["Value"][0],
                        const["sop_class_uid"], i + 1, const["rows"], const["columns"],
                        const["bits_allocated"], const["number_of_frames"], TRANSFER_SYNTAX,
                        key, 9000 + (instance_pk % 977), sha(key.encode()).digest(), dumps(meta).decode(),
                    )  # fmt: skip


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


async def bulk_load(dsn: str, pop: Population) -> Any:
    from bench.qido import LoadStats

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


# ---------------------------------------------------------------------------
# EXPLAIN


def _resources() -> dict[str, Any]:
    """Route path → QIDO Resource, from the server's route table (its API list: the routes
    themselves wrap each handler in the access guard)."""
    from dicomweb_server import app

    out = {}
    for path, methods, handler, _transaction in app.API:
        keywords = getattr(handler, "keywords", None) or {}
        if "resource" in keywords and "GET" in methods:
            out[path] = keywords["resource"]
    return out


def build_sql(path: str, after_pk: int | None = None) -> Any:
    """The statements our server runs for ``path`` (relative to /dicomweb), as qido.search builds them."""
    from dicomweb_server.db.search import to_sql
    from dicomweb_server.dicom.query import parse_query
    from dicomweb_server.settings import Settings

    settings = Settings()
    parts = urlsplit(path)
    segments = parts.path.strip("/").split("/")
    study_uid: str | None = None
    if len(segments) == 1:
        template = f"/dicomweb/{segments[0]}"
    elif len(segments) == 3 and segments[0] == "studies":
        template, study_uid = f"/dicomweb/studies/{{study}}/{segments[2]}", segments[1]
    else:
        raise ValueError(f"no QIDO route for {path}")
    resource = _resources()[template]
    query = parse_query(
        parts.query,
        resource,
        study_uid=study_uid,
        max_limit=settings.qido_max_limit,
        max_offset=settings.qido_max_offset,
    )
    statements = to_sql(query, TENANT, after_pk=after_pk) if after_pk is not None else to_sql(query, TENANT)
    return query, statements


_SCAN = re.compile(
    r"(Parallel )?(Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: Backward)?(?: using (\S+))? on (\S+)"
)


def verdict(plan: str) -> str:
    """A one-line summary: seq scans (rows read), index scans (which index), sorts, execution time."""
    parts: list[str] = []
    lines = plan.splitlines()
    for n, line in enumerate(lines):
        m = _SCAN.search(line)
        if m is None:
            continue
        kind, index, table = m.group(2), m.group(3), m.group(4)
        if kind == "Seq Scan":
            actual = re.search(r"actual time=\S+ rows=(\d+) loops=(\d+)", line)
            read = ""
            if actual:
                loops = int(actual.group(2))
                removed = 0
                for follow in lines[n + 1 :]:
                    if "->" in follow:
                        break
                    found = re.search(r"Rows Removed by Filter: (\d+)", follow)
                    if found:
                        removed = int(found.group(1))
                        break
                read = f" ({(int(actual.group(1)) + removed) * loops} rows read)"
            text = f"SEQ SCAN on {table}{read}"
        elif kind == "Bitmap Heap Scan":
            continue  # its Bitmap Index Scan child names the index
        elif kind == "Bitmap Index Scan":
            text = f"bitmap index scan {table}"
        else:
            text = f"{kind.lower()} {index} on {table}"
        if text not in parts:
            parts.append(text)
    if re.search(r"(^|->  )(Incremental )?Sort ", plan, re.MULTILINE):
        parts.append("SORT")
    if re.search(r"(^|->  )(Parallel )?Hash Join", plan, re.MULTILINE):
        parts.append("hash join")
    timing = re.search(r"Execution Time: ([\d.]+) ms", plan)
    summary = ", ".join(parts) or "no scan"
    return summary + (f"; {float(timing.group(1)):.1f} ms" if timing else "")


def kind_of(summary: str) -> str:
    """index scan / index scan + sort / seq scan (+ sort)."""
    kind = "seq scan" if "SEQ SCAN" in summary else "index scan"
    return kind + (" + sort" if "SORT" in summary else "")


async def _explain(conn: asyncpg.Connection, sql: str, args: list[object]) -> str:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    return "\n".join(r[0] for r in rows)


async def _generic(conn: asyncpg.Connection, sql: str, args: list[object]) -> str:
    """The generic plan a prepared statement may switch to after 5 executions (values unknown)."""
    name = "bench_generic"
    await conn.execute(f"PREPARE {name} AS {sql}")
    try:
        types = await conn.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = $1", name
        )
        literals = [
            f"{await conn.fetchval(f'SELECT quote_nullable($1::{t}::text)', arg)}::{t}"
            for t, arg in zip(types, args, strict=True)
        ]
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name}({', '.join(literals)})")
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute(f"DEALLOCATE {name}")


def _literal(value: object) -> str:
    return repr(value) if not isinstance(value, list) else "{" + ",".join(map(str, value)) + "}"


async def explain_all(
    dsn: str,
    probes: dict[str, tuple[list[Probe], list[Probe]]],
    detail: QidoDetail,
    state: str,
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Verdicts per query type, and a markdown section (summary table, then SQL and plans)."""
    from bench.qido import QUERY_TYPES
    from dicomweb_server.db import pool as server_db

    # A connection from the server's own pool factory: the same session settings as its queries.
    pool = await server_db.create_pool(dsn, 1)
    conn = await pool.acquire()
    verdicts: dict[str, dict[str, str]] = {}
    doc: list[str] = []
    level = "###"
    try:
        version = await conn.fetchval("SHOW server_version")
        plan_mode = await conn.fetchval("SHOW plan_cache_mode")
        jit = await conn.fetchval("SHOW jit")
        for q in QUERY_TYPES:
            probe = probes[q.key][1][0]
            after_pk = None
            later = [p for p in probes[q.key][1] if p.offset > 0]
            if q.key == "offset-walk" and later:  # a later page: the keyset cache knows where it starts
                probe = next((p for p in later if p.offset >= 500), later[-1])
                after_pk = await conn.fetchval(
                    "SELECT pk FROM study WHERE tenant = $1 AND num_instances > 0 ORDER BY pk "
                    "OFFSET $2 LIMIT 1",
                    TENANT,
                    probe.offset - 1,
                )
            query, statements = build_sql(probe.path, after_pk)
            page = await _explain(conn, statements.page, statements.page_args)
            generic = await _generic(conn, statements.page, statements.page_args)
            count_runs = probe.total - probe.offset > query.limit
            count = await _explain(conn, statements.count, statements.count_args) if count_runs else None
            v = {"page": verdict(page), "generic": verdict(generic)}
            if count is not None:
                v["count"] = verdict(count)
            v["kind"] = ", ".join(dict.fromkeys(kind_of(v[k]) for k in ("page", "count") if k in v))
            verdicts[q.key] = v
            stats = detail.queries.get(q.key)
            measured = (
                f"HTTP p50 {stats.latency(50):.1f} ms, p95 {stats.latency(95):.1f} ms"
                if stats and stats.latencies
                else "not measured"
            )
            doc += [
                f"{level} {q.title} [{q.key}] at {detail.scale}",
                "",
                f"`GET /dicomweb{probe.path}`" + (f" (keyset: after pk {after_pk})" if after_pk else ""),
                f"— {measured}; page of {probe.expected}, {probe.total} match.",
                "",
                f"- **Verdict (page, custom plan):** {v['page']}",
                f"- Generic plan (a prepared statement's plan after 5 runs, unless plan_cache_mode forces "
                f"custom plans): {v['generic']}",
            ]
            if count is not None:
                doc.append(f"- **Count** (runs because more rows remain than the page holds): {v['count']}")
            else:
                doc.append("- Count: not run (the page holds every remaining row)")
            doc += [
                "",
                "```sql",
                statements.page,
                f"-- args: {', '.join(_literal(a) for a in statements.page_args)}",
                "```",
                "",
                "```",
                page,
                "```",
            ]
            if count is not None:
                doc += [
                    "",
                    "Count statement:",
                    "",
                    "```sql",
                    statements.count,
                    "```",
                    "",
                    "```",
                    count,
                    "```",
                ]
            if kind_of(v["generic"]) != kind_of(v["page"]):
                doc += ["", "Generic plan:", "", "```", generic, "```"]
            doc.append("")
    finally:
        await pool.release(conn)
        await pool.close()
    generic_used = plan_mode != "force_custom_plan"
    head = [
        f"## At {detail.scale}: {detail.studies} studies, {detail.series} series, "
        f"{detail.instances} instances",
        "",
        f"{state} PostgreSQL {version} (embedded, default settings); the server's connection settings "
        f"(from `db.pool.create_pool`): plan_cache_mode={plan_mode}, jit={jit}"
        + (
            "."
            if generic_used
            else "; the generic plan is shown for reference only: the server never uses it."
        ),
        "",
        "| query type | page (custom plan) | generic plan"
        + ("" if generic_used else " (unused)")
        + " | count | kind |",
        "|---|---|---|---|---|",
    ]
    for q in QUERY_TYPES:
        v = verdicts[q.key]
        head.append(f"| {q.title} | {v['page']} | {v['generic']} | {v.get('count', '-')} | {v['kind']} |")
    return verdicts, [*head, "", *doc]


PLANS_INTRO = [
    "# QIDO-RS query plans",
    "",
    "Generated by `python -m bench.run` (bench/qido_load.py); do not edit by hand.",
    "",
    "- SQL built with `dicomweb_server.dicom.query.parse_query` + `to_sql(query, 'dev')` for the route's "
    "Resource (app.ROUTES), exactly as `qido.search` builds it, for the first measured request of each "
    "query type (the offset walk: a page the keyset cache knows the start of).",
    "- `EXPLAIN (ANALYZE, BUFFERS)` with the real parameter values (a custom plan), and the generic plan via "
    "PREPARE + `plan_cache_mode = force_generic_plan` (asyncpg prepares statements; PostgreSQL may use the "
    "generic plan after five runs unless the connection forces custom plans: each section says which). "
    "The count statement runs only when the page is "
    "full and more rows remain (the server then sends the Warning header with the remaining count).",
    "- Verdict: the scans in plan order (SEQ SCAN with the rows it read, index scans with the index), SORT "
    "when a sort node is present, then the execution time.",
    "",
]


def write_plans(path: Path, sections: list[list[str]]) -> None:
    lines = [*PLANS_INTRO, f"- **Date**: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    for section in sections:
        lines += [*section, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
