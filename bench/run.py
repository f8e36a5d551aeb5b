"""Entry point: ``python -m bench.run [--quick] [--suite stow,...,orders] [--targets ours,...]``.

Ours needs a bearer token on every DICOMweb route: after its start the harness gets one for the dev
client that ``serve`` bootstraps on loopback, and raises its rate limit so it never refuses. The
access suite times the same QIDO search on ours, on ours with the limiter in Redis (``ours-redis``)
and on ours from the commit before the access layer (``ours-noauth``): see bench/access/.

Re-executes itself inside a private network namespace (``unshare --net``, loopback only), starts each
target in turn on 127.0.0.1 (fresh for every session of workloads: the STOW workloads share one, each
QIDO scenario has its own), runs the workloads against it, stops it, and reports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from bench.access import report as access_report
from bench.access import workload as access_workload
from bench.corpus.ct import CT_FULL, CT_QUICK, SMALL_FULL, SMALL_QUICK, load_corpus
from bench.corpus.population import load_stow_corpus
from bench.corpus.retrieve import load_retrieve_corpus
from bench.harness import environment, report
from bench.harness.outcome import Outcome, Outcomes, merge_rounds
from bench.harness.servers import (
    RATE_BYTES,
    RATE_REQUESTS,
    REPO,
    TARGET_NAMES,
    baseline_revision,
    export_revision,
)
from bench.harness.session import DELETED_STAMP, bench_target, sessions, wait_after_deletion
from bench.harness.suite import Suite
from bench.harness.workload import Context, Result, Workload
from bench.orders import report as orders_report
from bench.orders import workloads as orders_workloads
from bench.qido import explain
from bench.qido import report as qido_report
from bench.qido import workloads as qido_workloads
from bench.qido.workloads import QidoOptions, big_spec, small_spec
from bench.stow import report as stow_report
from bench.stow import workloads as stow_workloads
from bench.wado import goals as wado_goals
from bench.wado import report as wado_report
from bench.wado import workloads as wado_workloads
from bench.wado.runner import WadoOptions
from bench.wado.runner import options as retrieve_options

# THE registry: suite name (what --suite selects) -> its workloads, goals and report sections.
# The order is the order of the workloads in a run and of the sections and goals in the report.
SUITES: dict[str, Suite] = {
    "stow": Suite(
        stow_workloads.WORKLOADS,
        stow_report.GOALS,
        progress=report.progress_lines,
        console=stow_report.console_lines,
        markdown=stow_report.markdown_lines,
        method=stow_report.method_lines,
    ),
    "qido": Suite(
        qido_workloads.WORKLOADS,
        qido_report.GOALS,
        progress=qido_report.progress_lines,
        console=qido_report.console_lines,
        markdown=qido_report.markdown_lines,
        environment=qido_report.corpus_lines,
        method=qido_report.method_lines,
    ),
    "retrieve": Suite(
        wado_workloads.WORKLOADS,
        wado_goals.GOALS,
        progress=wado_report.progress_lines,
        console=wado_report.console_lines,
        markdown=wado_report.markdown_lines,
        environment=wado_report.corpus_lines,
        method=wado_report.method_lines,
    ),
    "access": Suite(
        access_workload.WORKLOADS,
        access_report.GOALS,
        console=access_report.console_lines,
        markdown=access_report.markdown_lines,
    ),
    "orders": Suite(
        orders_workloads.WORKLOADS,
        orders_report.GOALS,
        console=orders_report.console_lines,
        markdown=orders_report.markdown_lines,
        method=orders_report.method_lines,
    ),
}
WORKLOADS: tuple[Workload, ...] = tuple(w for suite in SUITES.values() for w in suite.workloads)
SUITE_OF: dict[str, Suite] = {w.key: suite for suite in SUITES.values() for w in suite.workloads}
SUITE_NAME: dict[str, str] = {w.key: name for name, suite in SUITES.items() for w in suite.workloads}
GOALS = report.goals(tuple(SUITES.values()))

NETNS_FLAG = "DICOMWEB_BENCH_IN_NETNS"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--targets", default=",".join(TARGET_NAMES), help="comma list of %(default)s")
    p.add_argument(
        "--workloads", default=",".join(w.key for w in WORKLOADS), help="comma list of %(default)s"
    )
    p.add_argument(
        "--suite",
        default=",".join(SUITES),
        help="comma list of workload suites to run, from %(default)s (filters --workloads)",
    )
    p.add_argument(
        "--quick", action="store_true", help="small corpora and body: a smoke run of a few minutes"
    )
    p.add_argument(
        "--qido-studies",
        type=int,
        default=None,
        help="QIDO 20k scenario: studies of 25 instances loaded by STOW (default 800, quick 80)",
    )
    p.add_argument(
        "--qido-big-studies",
        type=int,
        default=None,
        help="QIDO 1M scenario: studies of 25 instances COPYed into ours (default 40000, quick 2000)",
    )
    p.add_argument(
        "--qido-iterations",
        type=int,
        default=None,
        help="measured requests per QIDO query type (40, quick 10)",
    )
    p.add_argument(
        "--qido-warmup", type=int, default=None, help="warm-up requests per QIDO query type (5, quick 2)"
    )
    p.add_argument(
        "--plans-out",
        type=Path,
        default=None,
        help="EXPLAIN report of the 1M scenario (default docs/qido-plans.md; .bench-cache/ with --quick)",
    )
    p.add_argument(
        "--big-gib", type=float, default=None, help="size of the big-body request (default 2, quick 0.25)"
    )
    p.add_argument(
        "--skip-big", action="store_true", help="skip the big-body STOW and the big-study retrieve scenarios"
    )
    p.add_argument(
        "--retrieve-big-gib",
        type=float,
        default=None,
        help="size of the study the slow client retrieves (default 2, quick 0.25)",
    )
    p.add_argument(
        "--retrieve-rate",
        type=float,
        default=100.0,
        metavar="MB_S",
        help="read rate of the slow client in the big-study retrieve (default %(default)s; 0: unthrottled)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="run every target N times (fresh each time); report the median"
    )
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (default %(default)s)")
    p.add_argument(
        "--pg-index-connections",
        type=int,
        default=1,
        help="Orthanc PostgreSQL plugin IndexConnectionsCount (default %(default)s, as shipped)",
    )
    p.add_argument(
        "--ours-bin", type=Path, default=None, help="dicomweb-server executable (default: the venv's)"
    )
    p.add_argument(
        "--ours-rev",
        default=None,
        metavar="REV",
        help="run ours from a git archive of this commit (e.g. HEAD) instead of the work tree, which "
        "others may be editing; the venv's installed packages are used",
    )
    p.add_argument(
        "--baseline-rev",
        default=None,
        metavar="REV",
        help="the ours-noauth target of the access suite: ours at this commit (default: the parent of the "
        "commit that added the access layer, 'Access: OAuth2 client credentials ...')",
    )
    p.add_argument("--cache-dir", type=Path, default=REPO / ".bench-cache")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown report (default docs/benchmarks.md; .bench-cache/benchmarks-quick.md with --quick)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each target, wait up to SECONDS (default %(default)s) for the machine's CPU use "
        "to drop below 10%% (0: don't wait)",
    )
    p.add_argument("--keep-data", action="store_true", help="keep each target's data directory")
    p.add_argument(
        "--no-netns", action="store_true", help="stay in the current network namespace (skips Orthanc)"
    )
    return p.parse_args(argv)


def enter_private_netns(argv: list[str]) -> None:
    """Re-exec under ``unshare --net`` (once) and bring loopback up: nothing can be reached from outside."""
    if os.environ.get(NETNS_FLAG) != "1":
        if os.geteuid() != 0:
            sys.exit("bench: need root for 'unshare --net' (or pass --no-netns)")
        os.environ[NETNS_FLAG] = "1"
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, "-m", "bench.run", *argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def print_progress(target: str, workload: str, result: Result) -> None:
    """A suite's own summary of a result that carries its detail, else the STOW-like line."""
    show = SUITE_OF[workload].progress if result.extra is not None else report.progress_lines
    for line in show(target, result):
        print(line, flush=True)


def select_workloads(args: argparse.Namespace) -> list[str]:
    suites = {s for s in args.suite.split(",") if s}
    unknown = suites - set(SUITES)
    if unknown:
        sys.exit(f"bench: unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    by_key = {w.key: w for w in WORKLOADS}
    chosen = [w for w in args.workloads.split(",") if w]
    for key in chosen:
        if key not in by_key:
            sys.exit(f"bench: unknown workload {key!r}; choose from {', '.join(by_key)}")
    big = ("stow-big-body", "wado-big")
    return [w for w in chosen if SUITE_NAME[w] in suites and not (args.skip_big and w in big)]


def qido_options(args: argparse.Namespace, workloads: list[str]) -> QidoOptions | None:
    if not any(w.startswith(("qido", "access")) for w in workloads):
        return None
    quick = args.quick
    default_plans = args.cache_dir / "qido-plans-quick.md" if quick else REPO / "docs" / "qido-plans.md"
    opts = QidoOptions(
        small=small_spec(quick, args.qido_studies),
        big=big_spec(quick, args.qido_big_studies),
        warmup=args.qido_warmup if args.qido_warmup is not None else (2 if quick else 5),
        iterations=args.qido_iterations or (10 if quick else 40),
        cache_dir=args.cache_dir,
        plans_out=args.plans_out or default_plans,
    )
    if "qido-20k" in workloads or "access-qido" in workloads:
        opts.corpus = load_stow_corpus(opts.small, args.cache_dir)
    return opts


def wado_options(args: argparse.Namespace, workloads: list[str]) -> WadoOptions | None:
    if not any(w.startswith("wado") for w in workloads):
        return None
    opts = retrieve_options(
        args.quick, args.cache_dir, args.retrieve_big_gib, args.retrieve_rate, args.wait_quiet
    )
    if any(w in workloads for w in ("wado-study", "wado-metadata", "wado-frames")):
        opts.corpus = load_retrieve_corpus(opts.retrieve_instances, args.cache_dir)
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.leftover_dirs = []  # each target's data directory, removed when the run ends
    if not args.no_netns:
        enter_private_netns(argv)
    args.ours_src = export_revision(args.ours_rev, args.cache_dir) if args.ours_rev else None
    args.baseline_src = None
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    targets = [t for t in args.targets.split(",") if t]
    workloads = select_workloads(args)
    if "access-qido" in workloads and "ours-noauth" in targets:
        args.baseline_src = export_revision(args.baseline_rev or baseline_revision(), args.cache_dir)
    big_gib = args.big_gib if args.big_gib is not None else (0.25 if args.quick else 2.0)
    specs = (CT_QUICK, SMALL_QUICK) if args.quick else (CT_FULL, SMALL_FULL)
    stow = any(w.startswith("stow") for w in workloads)
    corpora = {spec.name: load_corpus(spec, args.cache_dir) for spec in specs} if stow else {}
    qido = qido_options(args, workloads)
    wado = wado_options(args, workloads)
    ctx = Context(corpora=corpora, concurrency=args.concurrency, big_gib=big_gib, qido=qido, wado=wado)
    ctx.orders = orders_workloads.QUICK if args.quick else orders_workloads.FULL
    log_dir = args.cache_dir / "logs" / time.strftime("%Y%m%d-%H%M%S")
    env = environment.describe(args, corpora, big_gib, workloads)
    for suite in SUITES.values():
        env.update(suite.environment(args, ctx, workloads))
    if args.baseline_src is not None:
        env["Access baseline (ours-noauth)"] = f"git {args.baseline_src.name[:7]} (exported)"

    selected = [w for w in WORKLOADS if w.key in workloads]
    targets = [t for t in targets if sessions(t, selected)]  # e.g. the sink has no QIDO workload
    env["Waited after the previous run's clean-up"] = f"{wait_after_deletion(args.cache_dir):.0f} s"
    rounds: dict[str, list[Outcome]] = {name: [] for name in targets}
    try:
        for number in range(1, args.rounds + 1):  # interleaved, so slow drifts hit every target alike
            for name in targets:
                if args.rounds > 1:
                    print(f"[{name}] round {number}/{args.rounds}", flush=True)
                rounds[name].append(bench_target(name, args, ctx, log_dir, selected, print_progress))
    except KeyboardInterrupt:
        print(f"\ninterrupted; servers stopped; logs in {log_dir}", flush=True)
        return 130
    finally:
        if not args.keep_data and args.leftover_dirs:
            for workdir in args.leftover_dirs:
                shutil.rmtree(workdir, ignore_errors=True)
            (args.cache_dir / DELETED_STAMP).write_text(f"{time.time()}\n")
    outcomes: Outcomes = {name: merge_rounds(per_target) for name, per_target in rounds.items()}

    waited = sum(o.waited for o in outcomes.values())
    env["Run time"] = (
        f"{time.monotonic() - started:.0f} s in all, of which {waited:.0f} s waiting for a quiet machine; "
        + ", ".join(f"{o.target} {o.seconds:.0f} s" for o in outcomes.values())
    )
    suites = tuple(SUITES.values())
    print(report.console_table(outcomes, suites))
    out = args.out or (
        args.cache_dir / "benchmarks-quick.md" if args.quick else REPO / "docs" / "benchmarks.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = [
        *(line for suite in suites for line in suite.method(args, ctx, workloads)),
        f"- ours: every DICOMweb request carries `Authorization: Bearer` with a token of the dev client "
        f"that `serve` bootstraps on loopback (client credentials at `/oauth/token`); its rate limit is "
        f"raised to {RATE_REQUESTS:.0e} requests and {RATE_BYTES:.0e} bytes per window "
        "(`DICOMWEB_RATE_REQUESTS`, `DICOMWEB_RATE_BYTES`), so the limiter counts but never refuses.",
    ]
    out.write_text(report.markdown(env, outcomes, notes, suites))
    if qido is not None and (plans := qido_report.plan_sections(outcomes)):
        explain.write_plans(qido.plans_out, plans)
        print(f"wrote {qido.plans_out}")
    print(f"\nwrote {out}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
