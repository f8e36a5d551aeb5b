"""Sessions: one fresh server per group of workloads, per target, and what is checked after it.

A session starts the target in a fresh work directory, runs its workloads in registry order, asks
the target how many instances it holds (a broken server must not look fast), and stops it. Work
directories are removed at the end of the run, never between targets (see ``wait_after_deletion``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from bench.harness import environment
from bench.harness.outcome import Outcome
from bench.harness.procs import TargetUnavailable, log_tail
from bench.harness.sampling import wait_until_quiet
from bench.harness.servers import make_target
from bench.harness.target import Endpoint, disk_usage
from bench.harness.workload import Context, Result, Workload

Progress = Callable[[str, str, Result], None]  # (target, workload key, result)


async def run_target(
    endpoint: Endpoint, outcome: Outcome, ctx: Context, workloads: list[Workload], progress: Progress
) -> None:
    limits = httpx.Limits(max_connections=ctx.concurrency, max_keepalive_connections=ctx.concurrency)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(1800.0), limits=limits, headers=endpoint.headers
    ) as client:
        for workload in workloads:
            print(f"[{endpoint.target}] {workload.key} ...", flush=True)
            result = await workload.run(client, endpoint, ctx)
            outcome.results[workload.key] = result
            progress(endpoint.target, workload.key, result)


def stored_check(results: list[Result], stored: int | None, endpoint: Endpoint) -> tuple[bool, str]:
    """Did the target really store what it acknowledged? (A broken server must not look fast.)"""
    sent = sum(r.sent_instances for r in results)
    payload = sum(r.payload_bytes for r in results)
    if not payload and not sent:
        return True, "n/a (nothing sent by STOW)"
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


def sessions(name: str, workloads: Sequence[Workload]) -> list[list[Workload]]:
    """The selected workloads that apply to ``name``, grouped by session (one fresh server each)."""
    groups: dict[str, list[Workload]] = {}
    for w in workloads:
        if w.applies(name):
            groups.setdefault(w.session, []).append(w)
    return list(groups.values())


def bench_target(
    name: str,
    args: argparse.Namespace,
    ctx: Context,
    log_dir: Path,
    workloads: Sequence[Workload],
    progress: Progress,
) -> Outcome:
    outcome = Outcome(name)
    if not environment.isolated() and name.startswith("orthanc"):
        outcome.skipped = "Orthanc listens on every interface; only run inside the private network namespace"
        print(f"[{name}] SKIPPED: {outcome.skipped}", flush=True)
        return outcome
    checks: list[str] = []
    for group in sessions(name, workloads):
        if not bench_session(name, args, ctx, log_dir, group, outcome, checks, progress):
            break
    outcome.stored_check = "; ".join(checks) or outcome.stored_check
    return outcome


def bench_session(
    name: str,
    args: argparse.Namespace,
    ctx: Context,
    log_dir: Path,
    group: list[Workload],
    outcome: Outcome,
    checks: list[str],
    progress: Progress,
) -> bool:
    """One fresh server for ``group``; False if the target could not run at all."""
    started = time.monotonic()
    target = make_target(name, args.pg_index_connections, args.ours_bin, args.ours_src, args.baseline_src)
    work_root = args.cache_dir / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
    label = f"{name}/{group[0].session}"
    try:
        if args.wait_quiet > 0:
            outcome.waited += wait_until_quiet(0.10, args.wait_quiet, label)
            started = time.monotonic()
        print(f"[{label}] starting (workdir {workdir}, logs {log_dir})", flush=True)
        endpoint = target.start(workdir, log_dir)
        outcome.notes.update(endpoint.notes)
        asyncio.run(run_target(endpoint, outcome, ctx, group, progress))
        results = [outcome.results[w.key] for w in group if w.key in outcome.results]
        ok, check = stored_check(results, target.stored_instances(), endpoint)
        outcome.stored_ok = outcome.stored_ok and ok
        checks.append(f"{group[0].session}: {check}")
        print(f"[{label}] stored-instance check: {check}", flush=True)
        if not ok or any(r.errors for r in results):
            print(
                f"[{label}] PROBLEMS; tail of {endpoint.log_path}:\n{log_tail(endpoint.log_path)}", flush=True
            )
    except TargetUnavailable as exc:
        outcome.skipped = str(exc)
        print(f"[{label}] SKIPPED: {exc}", flush=True)
        return False
    finally:
        target.stop()
        # Removed at the end of the run, not now: on an ext4 without a journal (this machine's) the
        # inode allocator steps one by one over inodes freed in the last minutes, which made file
        # creation several times dearer for whichever target ran right after a deletion.
        args.leftover_dirs.append(workdir)
        os.sync()
        outcome.seconds += time.monotonic() - started
    return True


DELETED_STAMP = "last-cleanup"
DELETION_SHADOW = 360.0  # seconds; ext4 avoids reusing inodes freed within 60 s, or 360 s while dirty


def wait_after_deletion(cache_dir: Path) -> float:
    """Sleep until the previous run's clean-up is old enough not to slow file creation.

    On ext4 without a journal (this machine's) the inode allocator steps, one by one, over every
    inode freed in the last minutes; a run right after another's clean-up measured the first
    targets' STOW at about half speed.  Returns the seconds waited."""
    stamp = cache_dir / DELETED_STAMP
    try:
        deleted = float(stamp.read_text())
    except (OSError, ValueError):
        return 0.0
    wait = deleted + DELETION_SHADOW - time.time()
    if wait <= 0:
        return 0.0
    print(
        f"[bench] waiting {wait:.0f} s: the previous run removed its data {DELETION_SHADOW - wait:.0f} s ago",
        flush=True,
    )
    time.sleep(wait)
    return wait
