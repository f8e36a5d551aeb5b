"""QIDO sections of the console table and docs/benchmarks.md, and the per-query-type goals."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bench.harness.goals import Goal
from bench.harness.outcome import Outcomes
from bench.harness.servers import REPO
from bench.harness.workload import Context, Result
from bench.qido.measure import BUDGET_SECONDS, MIN_ITERATIONS, QidoDetail, QueryStats, details
from bench.qido.queries import QUERY_TYPES

SMALL_P95_MS = 10.0
EXACT_P50_MS = 3.0
BIG_P95_MS = 25.0
QIDO_TARGETS = ("ours", "orthanc-sqlite", "orthanc-postgresql")
BASELINE = "orthanc-sqlite"


def _detail(outcomes: Outcomes, target: str, workload: str) -> QidoDetail | None:
    outcome = outcomes.get(target)
    return details(outcome.results.get(workload)) if outcome is not None else None


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _counts_ok(stats: QueryStats) -> bool:
    return bool(stats.counts) and not stats.mismatches and not stats.warning_problems and not stats.errors


# ---------------------------------------------------------------------------
# Goals


def small_verdict(outcomes: Outcomes, key: str) -> tuple[str, str, bool | None]:
    """(goal text, verdict text, met) for one query type at 20k."""
    q = next(q for q in QUERY_TYPES if q.key == key)
    goal = f"p95 ≤ {SMALL_P95_MS:g} ms and ≤ {BASELINE} p95" + (
        f"; p50 ≤ {EXACT_P50_MS:g} ms" if q.exact_key else ""
    )
    ours = _detail(outcomes, "ours", "qido-20k")
    stats = ours.queries.get(key) if ours else None
    if stats is None or not stats.latencies:
        return goal, "n/a (ours not measured)", None
    problems = []
    p50, p95 = stats.latency(50), stats.latency(95)
    if p95 > SMALL_P95_MS:
        problems.append(f"p95 {p95:.1f} > {SMALL_P95_MS:g} ms")
    base = _detail(outcomes, BASELINE, "qido-20k")
    base_stats = base.queries.get(key) if base else None
    compared = base_stats is not None and bool(base_stats.latencies)
    if compared and base_stats is not None and p95 > base_stats.latency(95):
        problems.append(f"p95 above {BASELINE}'s {base_stats.latency(95):.1f} ms")
    if q.exact_key and p50 > EXACT_P50_MS:
        problems.append(f"p50 {p50:.1f} > {EXACT_P50_MS:g} ms")
    if not _counts_ok(stats):
        problems.append("wrong result count" if stats.mismatches or stats.warning_problems else "errors")
    if problems:
        return goal, "MISSED: " + "; ".join(problems), False
    return goal, "met" if compared else f"met (no {BASELINE} figure to compare)", True


def big_verdict(outcomes: Outcomes, key: str) -> tuple[str, str, bool | None]:
    goal = f"p95 ≤ {BIG_P95_MS:g} ms"
    ours = _detail(outcomes, "ours", "qido-1m")
    stats = ours.queries.get(key) if ours else None
    if stats is None or not stats.latencies:
        return goal, "n/a (not measured)", None
    problems = []
    if stats.latency(95) > BIG_P95_MS:
        problems.append(f"p95 {stats.latency(95):.1f} > {BIG_P95_MS:g} ms")
    if not _counts_ok(stats):
        problems.append("wrong result count" if stats.mismatches or stats.warning_problems else "errors")
    return (goal, "MISSED: " + "; ".join(problems), False) if problems else (goal, "met", True)


def share_met(workload: str) -> Any:
    """For GOALS: the share of query types that meet their goals (None if not measured)."""

    def compute(outcomes: Outcomes) -> float | None:
        judge = small_verdict if workload == "qido-20k" else big_verdict
        results = [judge(outcomes, q.key)[2] for q in QUERY_TYPES]
        judged = [r for r in results if r is not None]
        return sum(judged) / len(judged) if judged else None

    return compute


# ---------------------------------------------------------------------------
# Console


def progress_lines(target: str, result: Result) -> list[str]:
    d = details(result)
    if d is None:
        return []
    lines = [
        f"[{target}] {result.workload}: load {d.load.instances} inst in {d.load.seconds:.1f} s "
        f"({d.load.inst_per_s:.0f} inst/s); {result.requests} queries in {result.query_seconds:.1f} s, "
        f"other CPU {result.proc.foreign_cpu:.0%}"
        + (f", {len(result.errors)} ERRORS" if result.errors else "")
    ]
    for s in d.queries.values():
        flag = f"  COUNT MISMATCH {len(s.mismatches)}/{len(s.counts)}" if s.mismatches else ""
        lines.append(
            f"[{target}]   {s.key:<17} p50 {_ms(s.latency(50)):>6} ms  p95 {_ms(s.latency(95)):>6} ms  "
            f"results {s.count_text}{flag}"
        )
    lines += [f"[{target}]   ERROR {e}" for e in result.errors[:3]]
    lines += [f"[{target}]   warning {w}" for w in result.warnings[:5]]
    return lines


def console_lines(outcomes: Outcomes) -> list[str]:
    lines: list[str] = []
    for workload, judge in (("qido-20k", small_verdict), ("qido-1m", big_verdict)):
        targets = [t for t in QIDO_TARGETS if _detail(outcomes, t, workload) is not None]
        if not targets:
            continue
        lines += ["", f"QIDO {workload} (p50/p95 ms, results)"]
        for q in QUERY_TYPES:
            cells = []
            for t in targets:
                d = _detail(outcomes, t, workload)
                s = d.queries.get(q.key) if d else None
                cells.append(
                    f"{t} {_ms(s.latency(50))}/{_ms(s.latency(95))} n={s.count_text}" if s else f"{t} -"
                )
            lines.append(f"  {q.key:<17} " + "  ".join(cells) + f"  -> {judge(outcomes, q.key)[1]}")
    return lines


# ---------------------------------------------------------------------------
# Markdown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _latency_cell(stats: QueryStats | None) -> str:
    if stats is None or not stats.latencies:
        return "-"
    text = f"{_ms(stats.latency(50))} / {_ms(stats.latency(95))}"
    return text + (f" (n={len(stats.latencies)})" if stats.capped else "")


def _result_cell(stats: QueryStats | None, ours: bool) -> str:
    if stats is None or not stats.counts:
        return "-" if stats is None or not stats.errors else f"{len(stats.errors)} errors"
    text = stats.count_text
    if stats.mismatches:
        text += f" ({len(stats.mismatches)}/{len(stats.counts)} ≠ {'model' if ours else 'ours'})"
    return text


def _mismatch_lines(outcomes: Outcomes, workload: str) -> list[str]:
    out = []
    for t in QIDO_TARGETS:
        d = _detail(outcomes, t, workload)
        if d is None:
            continue
        for s in d.queries.values():
            if s.mismatches:
                path, got, want = s.mismatches[0]
                examples = {(p, g, w) for p, g, w in s.mismatches}
                more = f" ({len(examples)} distinct)" if len(examples) > 1 else ""
                who = "the model (ours MUST match)" if t == "ours" else "ours (= the model)"
                out.append(
                    f"- **{t}**, {s.title}: {len(s.mismatches)}/{len(s.counts)} requests return a different "
                    f"count than {who}; e.g. `{path}` → {got}, expected {want}{more}."
                )
            for w in s.warning_problems[:1]:
                out.append(f"- **{t}**, {s.title}: Warning header count wrong: {w}")
    return out


def _load_line(target: str, d: QidoDetail) -> str:
    load = d.load
    text = (
        f"- **{target}**: {load.instances} instances in {load.seconds:.1f} s ({load.inst_per_s:.0f} inst/s) "
        f"by {load.method}"
    )
    if load.steps:
        text += " (" + ", ".join(f"{k} {v:.1f} s" for k, v in load.steps.items()) + ")"
    if load.notes:
        text += "; " + "; ".join(load.notes)
    return text


def markdown_lines(outcomes: Outcomes, env: dict[str, str]) -> list[str]:
    out: list[str] = []
    small = {t: _detail(outcomes, t, "qido-20k") for t in QIDO_TARGETS}
    small_targets = [t for t, d in small.items() if d is not None]
    if small_targets:
        d0 = next(d for d in small.values() if d is not None)
        out += [
            "",
            "## QIDO-RS searches, 20k instances [qido-20k]",
            "",
            f"{d0.studies} studies, {d0.series} series, {d0.instances} instances (64x64 MR/CT/PT), loaded by "
            "STOW into each target; per query type, latency p50 / p95 in ms measured on the client and the "
            "number of results per request (range over the requests). Goals: every type p95 ≤ 10 ms and ≤ "
            f"{BASELINE}'s p95; exact-key types p50 ≤ 3 ms; ours must return the count the model predicts. "
            "The goals judge ours as measured right after the load; 'ours after VACUUM ANALYZE' is the same "
            "requests once more after a VACUUM ANALYZE (what autovacuum does within a minute or so), to "
            "show which figures depend on planner statistics and dead tuples.",
            "",
        ]
        header = ["query type", "request (example)"]
        for t in small_targets:
            header += [f"{t} p50 / p95", f"{t} results"]
        ours_small = small.get("ours")
        settled = ours_small.settled if ours_small is not None else None
        if settled is not None:
            header.insert(4, "ours after VACUUM ANALYZE")
        header += ["goal", "verdict"]
        rows = []
        for q in QUERY_TYPES:
            row = [q.title, f"`{q.example}`"]
            for t in small_targets:
                d = small[t]
                s = d.queries.get(q.key) if d else None
                row += [_latency_cell(s), _result_cell(s, t == "ours")]
                if t == "ours" and settled is not None:
                    row.append(_latency_cell(settled.get(q.key)))
            goal, verdict, met = small_verdict(outcomes, q.key)
            if met is False and (plan := _plan_text(ours_small, q.key)):
                verdict += f" (plan as measured: {plan})"
            rows.append([*row, goal, verdict])
        out += _table(header, rows)
        out += ["", "Load (STOW, one series per request, 2 in flight):", ""]
        out += [_load_line(t, d) for t, d in small.items() if d is not None]
        mismatches = _mismatch_lines(outcomes, "qido-20k")
        out += ["", "Result counts compared with ours / the model:", ""]
        out += mismatches or ["- every target returned the expected count for every request."]
    big = _detail(outcomes, "ours", "qido-1m")
    if big is not None:
        out += [
            "",
            "## QIDO-RS searches, 1M instances, ours only [qido-1m]",
            "",
            f"{big.studies} studies, {big.series} series, {big.instances} instances COPYed straight into "
            "ours' index (same rows as ingest would write), then VACUUM ANALYZE; the same query types over "
            "HTTP. Goal: every type p95 ≤ 25 ms. Plan verdicts from `EXPLAIN (ANALYZE, BUFFERS)` of the SQL "
            f"the server builds (page statement; count statement when it runs); full plans in "
            f"`{_rel(big.plans_path)}`.",
            "",
        ]
        rows = []
        for q in QUERY_TYPES:
            s = big.queries.get(q.key)
            goal, verdict, _ = big_verdict(outcomes, q.key)
            plan_text = _plan_text(big, q.key) or "-"
            rows.append(
                [
                    q.title,
                    f"`{q.example}`",
                    _latency_cell(s),
                    _result_cell(s, True),
                    goal,
                    verdict,
                    plan_text,
                ]
            )
        out += _table(
            ["query type", "request (example)", "p50 / p95", "results", "goal", "verdict", "plan"], rows
        )
        out += ["", "Load:", "", _load_line("ours", big)]
        mismatches = _mismatch_lines(outcomes, "qido-1m")
        if mismatches:
            out += ["", "Result counts:", "", *mismatches]
    return out


def plan_sections(outcomes: Outcomes) -> list[list[str]]:
    """docs/qido-plans.md sections: 1M first, then ours at 20k as measured."""
    return [
        d.plan_doc
        for d in (_detail(outcomes, "ours", "qido-1m"), _detail(outcomes, "ours", "qido-20k"))
        if d is not None and d.plan_doc
    ]


def _plan_text(d: QidoDetail | None, key: str) -> str:
    plan = d.plans.get(key, {}) if d is not None else {}
    if not plan:
        return ""
    return plan["page"] + (f"; count: {plan['count']}" if "count" in plan else "")


def _rel(path: str | None) -> str:
    if not path:
        return "docs/qido-plans.md"
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


# ---------------------------------------------------------------------------
# Environment and method


def corpus_lines(args: argparse.Namespace, ctx: Context, workloads: list[str]) -> dict[str, str]:
    opts = ctx.qido
    if opts is None:
        return {}
    out = {}
    if "qido-20k" in workloads and opts.corpus is not None:
        pop = opts.corpus.population
        out["Corpus qido20k"] = (
            f"{len(pop.studies)} studies, {pop.series_count} series, {pop.instance_count} instances "
            f"(64x64 16-bit MR/CT/PT, {opts.corpus.payload_bytes / pop.instance_count / 1e3:.1f} kB each), "
            f"{len(pop.patients)} patients, StudyDate over 2024-2025, seed {pop.spec.seed}"
        )
    if "qido-1m" in workloads:
        spec = opts.big
        out["Corpus qido1m"] = (
            f"{spec.studies} studies x {spec.series_per_study} series, {spec.instances} instances "
            f"(index rows only), seed {spec.seed}"
        )
    if out:
        out["QIDO requests"] = (
            f"{opts.warmup} warm-up + {opts.iterations} measured per query type, sequential"
        )
    return out


def method_lines(args: argparse.Namespace, ctx: Context, workloads: list[str]) -> list[str]:
    if ctx.qido is None:
        return []
    return [
        "- QIDO: every target is started fresh for each QIDO scenario (its own index). Queries run one at "
        "a time over a single keep-alive connection (so ours' keyset page cache, which is per worker "
        "process, sees a client's pages in order); latency is measured in the client (httpx) from sending "
        "the request to having the whole body, JSON parsing excluded. Values vary per request (seeded), "
        "identically for every target; the same plain-ASCII query strings go to every target (Orthanc "
        "does not percent-decode), below `/dicomweb` (ours) or `/dicom-web` (Orthanc). A query type's "
        f"warm-up stops after {BUDGET_SECONDS / 2:g} s and its measured requests after {BUDGET_SECONDS:g} s "
        f"(at least {MIN_ITERATIONS}); '(n=...)' marks a figure from fewer requests than asked.",
        "- QIDO expected counts come from the population model (bench/qido/queries.py): PatientName "
        "matching folds case and accents as CONFORMANCE.md says; the limit caps a page; for ours the "
        "Warning header's remaining count is checked too. Orthanc's counts are compared with the model "
        "and differences are listed, not judged.",
        "- QIDO deep offset (cold): offsets 501-599, never where an earlier page ended, so ours' keyset "
        "cache cannot help; the offset walk asks for pages 0, 100, 200, ... in order (warm-up walks first), "
        "which ours answers from the keyset cache after the first page.",
        "- QIDO 1M: study/series/instance rows are COPYed (binary, asyncpg) into the running ours target's "
        "embedded PostgreSQL with the values ingest would store (checked against the ingest code on sample "
        "instances first); the instance table's secondary indexes and unique constraints are rebuilt after "
        "the COPY from their saved definitions; then VACUUM ANALYZE and CHECKPOINT. The EXPLAIN report "
        "is written to docs/qido-plans.md.",
    ]


GOALS = (
    Goal(
        "QIDO 20k: query types meeting their goals (see QIDO section)",
        share_met("qido-20k"),
        1.0,
        True,
        "%",
    ),
    Goal(
        "QIDO 1M: query types meeting p95 ≤ 25 ms (see QIDO section)",
        share_met("qido-1m"),
        1.0,
        True,
        "%",
    ),
)
