"""STOW sections of the console table and docs/benchmarks.md, the STOW goals and method notes."""

from __future__ import annotations

import argparse

from bench.harness.goals import Goal, ratio
from bench.harness.outcome import Outcomes
from bench.harness.report import md_table
from bench.harness.sampling import MIB
from bench.harness.servers import WORKERS
from bench.harness.workload import Context, Result
from bench.stow.workloads import WORKLOADS


def _big_growth(outcomes: Outcomes) -> float | None:
    result = outcomes["ours"].valid("stow-big-body") if "ours" in outcomes else None
    return result.proc.app_growth / MIB if result else None


GOALS = (
    Goal(
        "STOW 0.5 MB: ours / orthanc-postgresql inst/s",
        ratio("stow-ct512", "ours", "orthanc-postgresql", "inst_per_s"),
        2.0,
        True,
        "x",
    ),
    Goal(
        "STOW 0.5 MB: ours / orthanc-sqlite inst/s",
        ratio("stow-ct512", "ours", "orthanc-sqlite", "inst_per_s"),
        1.5,
        True,
        "x",
    ),
    Goal(
        "STOW 0.5 MB: ours MB/s / sink MB/s",
        ratio("stow-ct512", "ours", "sink", "mb_per_s"),
        0.70,
        True,
        "%",
    ),
    Goal(
        "STOW 9 KB: ours / orthanc-sqlite inst/s",
        ratio("stow-small64", "ours", "orthanc-sqlite", "inst_per_s"),
        2.0,
        True,
        "x",
    ),
    Goal("Big streamed STOW body: ours RSS growth", _big_growth, 64.0, False, "MiB"),
)

COLUMNS = (
    "target",
    "inst/s",
    "MB/s",
    "p50 ms",
    "p95 ms",
    "peak RSS MiB",
    "RSS growth MiB",
    "aux peak MiB",
    "CPU ms/inst",
    "other CPU",
    "status",
)


def result_row(target: str, result: Result | None, skipped: str | None) -> list[str]:
    if result is None:
        return [target, *["-"] * (len(COLUMNS) - 2), "skipped" if skipped else "not run"]
    proc = result.proc
    status = f"{len(result.errors)} errors" if result.errors else "ok"
    if result.warnings:
        status += f", {len(result.warnings)} warnings"
    return [
        target,
        f"{result.inst_per_s:.1f}",
        f"{result.mb_per_s:.1f}",
        f"{result.latency(50) * 1000:.0f}",
        f"{result.latency(95) * 1000:.0f}",
        f"{proc.app_peak / MIB:.0f}",
        f"{proc.app_growth / MIB:.0f}",
        f"{proc.aux_peak / MIB:.0f}" if proc.aux_peak else "-",
        f"{result.cpu_ms_per_instance:.2f}",
        f"{proc.foreign_cpu * 100:.0f}%",
        status,
    ]


def sections(outcomes: Outcomes) -> list[tuple[str, list[list[str]]]]:
    sections = []
    for workload in WORKLOADS:
        rows = [
            result_row(o.target, o.results.get(workload.key), o.skipped)
            for o in outcomes.values()
            if workload.applies(o.target)
        ]
        if any(row[-1] not in ("skipped", "not run") for row in rows):
            sections.append((f"{workload.title} [{workload.key}]", rows))
    return sections


def console_lines(outcomes: Outcomes) -> list[str]:
    lines: list[str] = []
    for title, rows in sections(outcomes):
        widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
        lines += ["", title, "  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def markdown_lines(outcomes: Outcomes, env: dict[str, str]) -> list[str]:
    out: list[str] = []
    for title, rows in sections(outcomes):
        out += ["", f"## {title}", "", *md_table(list(COLUMNS), rows)]
    return out


def method_lines(args: argparse.Namespace, ctx: Context, workloads: list[str]) -> list[str]:
    """The STOW part of the report's Method (also the notes every run shares: namespace, sampling)."""
    if not any(w.startswith("stow") for w in workloads):
        return []
    big_gib = ctx.big_gib
    return [
        "- Everything runs inside a private network namespace (`unshare --net`, loopback only); "
        "client and servers share the same CPUs, so the client's own cost is part of every figure.",
        "- Each target starts fresh (empty data directory), receives the warm-up series, then the measured "
        f"series with {args.concurrency} requests in flight; each request is one whole series as "
        '`multipart/related; type="application/dicom"`, bodies prebuilt in memory and sent by the lean '
        "client of bench/harness/rawhttp.py (httpx copied each body into a fresh buffer, a quarter of a "
        "core), each client over its own keep-alive connection; the one big body goes with httpx (chunked).",
        "- Each target's data directory is removed when the whole run ends, not between targets, and a run "
        "starts no sooner than 6 minutes after the previous run's clean-up: on this machine's ext4 (no "
        "journal) the inode allocator steps over every recently freed inode, which made STOW right after a "
        "large deletion run at about half speed.",
        "- inst/s and MB/s (10^6 bytes of DICOM payload per second) are over the wall time from the first "
        "measured request to the last response; p50/p95 are per-request latencies.",
        "- Peak RSS / growth: sum of RSS over the server's process tree, sampled every 50 ms; growth is peak "
        "minus the idle value just before the measured requests. 'aux' is side processes working in the "
        "target's directory (a PostgreSQL started for it), counted separately; PostgreSQL RSS includes "
        "shared buffers counted once per backend.",
        "- CPU ms/inst: CPU time of the server tree plus its aux processes per measured instance. other CPU: "
        "share of all CPUs used by processes outside the benchmark during the measurement (a quiet machine "
        "shows a few %; loopback TCP softirq time is not counted).",
        f"- ours: `dicomweb-server serve --workers {WORKERS}` with an empty DICOMWEB_DATA_DIR (embedded "
        "PostgreSQL); sink: `bench/harness/sink.py` (reads and discards the body) under the same uvicorn "
        f"setup (uvloop, httptools, {WORKERS} workers).",
        "- orthanc-sqlite / orthanc-postgresql: Debian's Orthanc with the DICOMweb plugin, default settings "
        "apart from ports and directories; the PostgreSQL index (plugin option IndexConnectionsCount="
        f"{args.pg_index_connections}) uses a private PostgreSQL started with pgserver over a unix socket.",
        "- Storage check: Orthanc's /statistics instance count must equal what was sent; for ours, every "
        "STOW response must list every instance and its data directory must hold >= 90% of the payload.",
        f"- Big body: one chunked STOW request of {big_gib:g} GiB made of unique 0.5 MB instances generated "
        "on the fly; the goal is on the server's RSS growth during that request.",
    ]
