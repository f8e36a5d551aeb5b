"""What the report says about the machine, the versions and the method."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil

from bench.corpus.ct import Corpus
from bench.harness.orthanc import orthanc_version
from bench.harness.servers import WORKERS, ours_revision


def isolated() -> bool:
    """True inside a network namespace whose only interface is loopback (per /proc/self/net/dev)."""
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _corpus_text(corpus: Corpus) -> str:
    spec = corpus.spec
    return (
        f"{spec.series_count} series x {spec.instances_per_series} instances of {spec.rows}x{spec.cols} "
        f"16-bit CT ({corpus.mean_instance_bytes / 1e3:.1f} kB each) + {spec.warmup_series} warm-up series"
    )


def disk_write_mb_s(directory: Path, size: int) -> float:
    """Sequential write speed where the servers keep their data (1 MiB blocks, then fsync)."""
    directory.mkdir(parents=True, exist_ok=True)
    path, block = directory / "disk-probe.tmp", os.urandom(1 << 20)
    started = time.perf_counter()
    try:
        with path.open("wb", buffering=0) as f:
            for _ in range(size // len(block)):
                f.write(block)
            os.fsync(f.fileno())
        return size / 1e6 / (time.perf_counter() - started)
    finally:
        path.unlink(missing_ok=True)


def describe(
    args: argparse.Namespace,
    corpora: dict[str, Corpus],
    big_gib: float,
    workloads: list[str] | None = None,
    qido: Any = None,
    wado: Any = None,
) -> dict[str, str]:
    load1, load5, _ = os.getloadavg()
    probe = (256 if args.quick else 1024) << 20
    env = {
        "Date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "Machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, Linux {platform.release()}",
        "Load average at start": f"{load1:.2f} (1 min), {load5:.2f} (5 min)",
        "ours": f"git {ours_revision(getattr(args, 'ours_src', None))}"
        + (f" (executable {args.ours_bin})" if args.ours_bin else ""),
        "Orthanc": orthanc_version(),
        "Python": platform.python_version(),
        "Disk write (data directories)": f"{disk_write_mb_s(args.cache_dir / 'work', probe):.0f} MB/s "
        f"sequential ({probe >> 20} MiB + fsync)",
        "Mode": "quick (smoke run)" if args.quick else "full",
        "Client concurrency": str(args.concurrency),
        "Rounds": f"{args.rounds} (each target started fresh per round; tables show the median round)"
        if args.rounds > 1
        else "1",
    }
    if workloads is not None:
        env["Workloads"] = ", ".join(workloads)
    for name, corpus in corpora.items():
        env[f"Corpus {name}"] = _corpus_text(corpus)
    if workloads is None or "stow-big-body" in workloads:
        env["Big body"] = "skipped" if args.skip_big else f"{big_gib:g} GiB in one request"
    if qido is not None:
        from bench.qido.report import corpus_lines

        env.update(corpus_lines(qido, workloads or []))
    if wado is not None:
        from bench.wado import report as wado_report

        env.update(wado_report.corpus_lines(wado, workloads or []))
    return env


def method_notes(
    args: argparse.Namespace,
    big_gib: float,
    workloads: list[str] | None = None,
    qido: Any = None,
    wado: Any = None,
) -> list[str]:
    notes = (
        stow_notes(args, big_gib) if workloads is None or any(w.startswith("stow") for w in workloads) else []
    )
    if qido is not None:
        from bench.qido.report import method_lines

        notes += method_lines(qido, workloads or [])
    if wado is not None:
        from bench.wado import report as wado_report

        notes += wado_report.method_lines(wado, workloads or [], args.concurrency)
    return notes


def stow_notes(args: argparse.Namespace, big_gib: float) -> list[str]:
    return [
        "- Everything runs inside a private network namespace (`unshare --net`, loopback only); "
        "client and servers share the same CPUs, so the client's own cost is part of every figure.",
        "- Each target starts fresh (empty data directory), receives the warm-up series, then the measured "
        f"series with {args.concurrency} requests in flight; each request is one whole series as "
        '`multipart/related; type="application/dicom"`, bodies prebuilt in memory and sent by the lean '
        "client of bench/rawhttp.py (httpx copied each body into a fresh buffer, a quarter of a core), "
        "each client over its own keep-alive connection; the one big body goes with httpx (chunked).",
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
        "PostgreSQL); sink: `bench/sink.py` (reads and discards the body) under the same uvicorn setup "
        f"(uvloop, httptools, {WORKERS} workers).",
        "- orthanc-sqlite / orthanc-postgresql: Debian's Orthanc with the DICOMweb plugin, default settings "
        "apart from ports and directories; the PostgreSQL index (plugin option IndexConnectionsCount="
        f"{args.pg_index_connections}) uses a private PostgreSQL started with pgserver over a unix socket.",
        "- Storage check: Orthanc's /statistics instance count must equal what was sent; for ours, every "
        "STOW response must list every instance and its data directory must hold >= 90% of the payload.",
        f"- Big body: one chunked STOW request of {big_gib:g} GiB made of unique 0.5 MB instances generated "
        "on the fly; the goal is on the server's RSS growth during that request.",
    ]
