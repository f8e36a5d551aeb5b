"""What the report says about the machine, the versions and the method."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import psutil

from bench.corpus.ct import Corpus
from bench.harness.orthanc import orthanc_version
from bench.harness.servers import ours_revision


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
    return env
