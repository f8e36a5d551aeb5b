"""Entry point: ``python -m bench.run [--quick] [--targets ours,orthanc-sqlite,...]``.

Re-executes itself inside a private network namespace (``unshare --net``, loopback only), starts each
target in turn on 127.0.0.1, runs the workloads against it, stops it, and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import httpx

from bench import environment
from bench.corpus import CT_FULL, CT_QUICK, SMALL_FULL, SMALL_QUICK, load_corpus
from bench.outcome import Outcome, Outcomes, merge_rounds
from bench.procs import TargetUnavailable, log_tail
from bench.report import console_table, markdown
from bench.sampling import wait_until_quiet
from bench.servers import REPO, TARGET_NAMES, make_target
from bench.target import Endpoint, disk_usage
from bench.workloads import WORKLOADS, Context, Result

NETNS_FLAG = "DICOMWEB_BENCH_IN_NETNS"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--targets", default=",".join(TARGET_NAMES), help="comma list of %(default)s")
    p.add_argument(
        "--workloads", default=",".join(w.key for w in WORKLOADS), help="comma list of %(default)s"
    )
    p.add_argument(
        "--quick", action="store_true", help="small corpus and body: a smoke run of a minute or so"
    )
    p.add_argument(
        "--big-gib", type=float, default=None, help="size of the big-body request (default 2, quick 0.25)"
    )
    p.add_argument("--skip-big", action="store_true", help="skip the big-body scenario")
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


async def run_target(endpoint: Endpoint, outcome: Outcome, ctx: Context, workloads: list[str]) -> None:
    limits = httpx.Limits(max_connections=ctx.concurrency, max_keepalive_connections=ctx.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as client:
        for workload in WORKLOADS:
            if workload.key not in workloads or not workload.applies(endpoint.target):
                continue
            print(f"[{endpoint.target}] {workload.key} ...", flush=True)
            result = await workload.run(client, endpoint, ctx)
            outcome.results[workload.key] = result
            print_progress(endpoint.target, result)


def print_progress(target: str, result: Result) -> None:
    proc = result.proc
    print(
        f"[{target}] {result.workload}: {result.instances} inst in {result.elapsed:.2f} s, "
        f"{result.inst_per_s:.1f} inst/s, {result.mb_per_s:.1f} MB/s, "
        f"peak RSS {proc.app_peak / 2**20:.0f} MiB, client CPU {proc.client_cpu / proc.wall:.0%} of a core, "
        f"other CPU {proc.foreign_cpu:.0%}"
        + (f", {len(result.errors)} ERRORS" if result.errors else "")
        + (f", {len(result.warnings)} warnings" if result.warnings else ""),
        flush=True,
    )
    for line in [*(f"ERROR {e}" for e in result.errors[:3]), *(f"warning {w}" for w in result.warnings[:3])]:
        print(f"[{target}]   {line}", flush=True)


def stored_check(outcome: Outcome, stored: int | None, endpoint: Endpoint) -> tuple[bool, str]:
    """Did the target really store what it acknowledged? (A broken server must not look fast.)"""
    sent = sum(r.sent_instances for r in outcome.results.values())
    payload = sum(r.payload_bytes for r in outcome.results.values())
    if not endpoint.stores_dicom:
        return True, "n/a (sink)"
    if stored is not None:
        ok = stored == sent
        return ok, f"{'ok' if ok else 'MISMATCH'}: server reports {stored} instances, {sent} sent"
    used = disk_usage(endpoint.workdir)
    ok = used >= 0.9 * payload
    return (
        ok,
        f"{'ok' if ok else 'SUSPICIOUS'}: {used / 1e6:.0f} MB on disk for {payload / 1e6:.0f} MB of payload",
    )


def bench_target(
    name: str, args: argparse.Namespace, ctx: Context, log_dir: Path, workloads: list[str]
) -> Outcome:
    outcome, started = Outcome(name), time.monotonic()
    if not environment.isolated() and name.startswith("orthanc"):
        outcome.skipped = "Orthanc listens on every interface; only run inside the private network namespace"
        print(f"[{name}] SKIPPED: {outcome.skipped}", flush=True)
        return outcome
    target = make_target(name, args.pg_index_connections, args.ours_bin)
    work_root = args.cache_dir / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
    try:
        if args.wait_quiet > 0:
            outcome.waited = wait_until_quiet(0.10, args.wait_quiet, name)
            started = time.monotonic()
        print(f"[{name}] starting (workdir {workdir}, logs {log_dir})", flush=True)
        endpoint = target.start(workdir, log_dir)
        outcome.notes.update(endpoint.notes)
        asyncio.run(run_target(endpoint, outcome, ctx, workloads))
        outcome.stored_ok, outcome.stored_check = stored_check(outcome, target.stored_instances(), endpoint)
        print(f"[{name}] stored-instance check: {outcome.stored_check}", flush=True)
        if not outcome.stored_ok or any(r.errors for r in outcome.results.values()):
            print(
                f"[{name}] PROBLEMS; tail of {endpoint.log_path}:\n{log_tail(endpoint.log_path)}", flush=True
            )
    except TargetUnavailable as exc:
        outcome.skipped = str(exc)
        print(f"[{name}] SKIPPED: {exc}", flush=True)
    finally:
        target.stop()
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
        os.sync()
        outcome.seconds = time.monotonic() - started
    return outcome


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_netns:
        enter_private_netns(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    targets = [t for t in args.targets.split(",") if t]
    workloads = [w for w in args.workloads.split(",") if w and not (args.skip_big and w == "stow-big-body")]
    big_gib = args.big_gib if args.big_gib is not None else (0.25 if args.quick else 2.0)
    specs = (CT_QUICK, SMALL_QUICK) if args.quick else (CT_FULL, SMALL_FULL)
    corpora = {spec.name: load_corpus(spec, args.cache_dir) for spec in specs}
    ctx = Context(corpora=corpora, concurrency=args.concurrency, big_gib=big_gib)
    log_dir = args.cache_dir / "logs" / time.strftime("%Y%m%d-%H%M%S")
    env = environment.describe(args, corpora, big_gib)

    rounds: dict[str, list[Outcome]] = {name: [] for name in targets}
    try:
        for number in range(1, args.rounds + 1):  # interleaved, so slow drifts hit every target alike
            for name in targets:
                if args.rounds > 1:
                    print(f"[{name}] round {number}/{args.rounds}", flush=True)
                rounds[name].append(bench_target(name, args, ctx, log_dir, workloads))
    except KeyboardInterrupt:
        print(f"\ninterrupted; servers stopped; logs in {log_dir}", flush=True)
        return 130
    outcomes: Outcomes = {name: merge_rounds(per_target) for name, per_target in rounds.items()}

    waited = sum(o.waited for o in outcomes.values())
    env["Run time"] = (
        f"{time.monotonic() - started:.0f} s in all, of which {waited:.0f} s waiting for a quiet machine; "
        + ", ".join(f"{o.target} {o.seconds:.0f} s" for o in outcomes.values())
    )
    print(console_table(outcomes))
    out = args.out or (
        args.cache_dir / "benchmarks-quick.md" if args.quick else REPO / "docs" / "benchmarks.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(env, outcomes, environment.method_notes(args, big_gib)))
    print(f"\nwrote {out}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
