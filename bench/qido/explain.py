"""EXPLAIN (ANALYZE, BUFFERS) of each query type's SQL on ours, and docs/qido-plans.md.

The statements are the server's own (``server.qido_sql``), run on a connection from its own pool
factory, for the first measured request of each query type; a verdict line sums up each plan.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import asyncpg

from bench.qido import server
from bench.qido.measure import QidoDetail
from bench.qido.queries import QUERY_TYPES, Probe
from bench.qido.server import TENANT

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
    # A connection from the server's own pool factory: the same session settings as its queries.
    pool = await server.create_pool(dsn)
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
            query, statements = server.qido_sql(probe.path, after_pk)
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
        f"(from `db.create_pool`): plan_cache_mode={plan_mode}, jit={jit}"
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
    "Generated by `python -m bench.run` (bench/qido/explain.py); do not edit by hand.",
    "",
    "- SQL built with `dicomweb_server.dicom.query.parse_query` + "
    "`dicomweb_server.db.search.to_sql(query, 'dev')` for the route's "
    "Resource (routes.API), exactly as `qido.search` builds it, for the first measured request of each "
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
