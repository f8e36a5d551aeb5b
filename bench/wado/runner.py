"""What the retrieve workloads share: their options, the corpus load, and the sequential runner.

The first retrieve workload to run on a fresh target stores the retrieve corpus by STOW
(``ensure_loaded``, once per server process); the metadata and frame workloads then time one
request at a time over one keep-alive connection (``sequential``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.corpus.multipart import build_body
from bench.corpus.retrieve import BigStudy, RetrieveCorpus, big_study
from bench.harness import rawhttp
from bench.harness.sampling import ProcessSampler, ProcStats, wait_until_quiet
from bench.harness.stow_client import post_all
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result
from bench.wado.measure import (
    LoadInfo,
    Measure,
    WadoDetail,
    budget_left,
    record,
    squeeze,
)


@dataclass
class WadoOptions:
    retrieve_instances: int  # instances in the whole-study retrieve study
    study_requests: int  # measured whole-study retrieves (all clients together)
    metadata_requests: int
    frame_requests: int  # per frame kind
    warmup: int  # warm-up requests per kind (whole-study: per client)
    big: BigStudy
    big_rate: float  # MB/s the slow client reads at (0: as fast as it can)
    cache_dir: Path
    quiet_wait: float = 20.0  # after a load: wait up to this long for the machine to quieten
    corpus: RetrieveCorpus | None = None
    loaded: dict[tuple[str, int], LoadInfo] = field(default_factory=dict)  # (target, pid) -> load


def options(
    quick: bool, cache_dir: Path, big_gib: float | None, big_rate: float, quiet_wait: float
) -> WadoOptions:
    return WadoOptions(
        retrieve_instances=150,
        study_requests=6 if quick else 24,
        metadata_requests=40 if quick else 200,
        frame_requests=40 if quick else 200,
        warmup=2 if quick else 5,
        big=big_study(big_gib if big_gib is not None else (0.25 if quick else 2.0)),
        big_rate=big_rate,
        cache_dir=cache_dir,
        quiet_wait=min(quiet_wait, 30.0),
    )


# ---------------------------------------------------------------------------
# Loading the corpus


async def ensure_loaded(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> LoadInfo | None:
    """Store the retrieve corpus into this target once; the LoadInfo if this call did it."""
    opts: WadoOptions = ctx.wado
    key = (endpoint.target, endpoint.app_pid)
    if key in opts.loaded:
        return None
    corpus = opts.corpus
    assert corpus is not None
    jobs = [(build_body(instances), len(instances)) for _, instances in corpus.uploads]
    print(f"[{endpoint.target}] retrieve: storing {corpus.instance_count} instances by STOW ...", flush=True)
    posted = await post_all(endpoint, jobs, ctx.concurrency)
    info = LoadInfo(
        corpus.instance_count,
        sum(len(i) for _, instances in corpus.uploads for i in instances),
        posted.elapsed,
        [f"load: {e}" for e in posted.errors],
        [f"load: {w}" for w in posted.warnings],
    )
    opts.loaded[key] = info
    waited = quiet(endpoint, opts)
    print(
        f"[{endpoint.target}] retrieve: stored in {posted.elapsed:.1f} s; waited {waited:.0f} s", flush=True
    )
    return info


def quiet(endpoint: Endpoint, opts: WadoOptions) -> float:
    """After a load: let the target finish its background work (Orthanc's jobs, autovacuum)."""
    return wait_until_quiet(0.10, opts.quiet_wait, endpoint.target) if opts.quiet_wait > 0 else 0.0


def result(
    workload: str,
    detail: WadoDetail,
    requests: int,
    elapsed: float,
    latencies: list[float],
    proc: ProcStats,
) -> Result:
    load = detail.load
    errors = list(load.errors) if load else []
    warnings = list(load.warnings) if load else []
    for m in detail.measures.values():
        errors += [f"{m.key}: {e}" for e in m.errors[:5]]
        warnings += [f"{m.key}: {q}" for q in m.quirks]
    return Result(
        workload=workload,
        requests=requests,
        instances=requests,  # so inst/s (used to pick the median round) is requests/s
        payload_bytes=load.payload_bytes if load else 0,  # what this workload stored (storage check)
        elapsed=elapsed,
        latencies=latencies,
        proc=proc,
        sent_instances=load.instances if load else 0,
        errors=errors,
        warnings=warnings,
        extra=detail,
    )


def idle(endpoint: Endpoint) -> ProcStats:
    with ProcessSampler(lambda: [endpoint.app_pid], lambda: []) as sampler:
        pass
    return sampler.stats()


# ---------------------------------------------------------------------------
# Sequential small requests: metadata and frames


Check = Callable[[rawhttp.Answer], tuple[int, str | None]]  # -> (items in the response, error)


async def sequential(
    conn: rawhttp.Connection,
    url: str,
    accept: str,
    measure: Measure,
    warmup: int,
    requests: int,
    check: Check,
) -> None:
    """``warmup`` then ``requests`` GETs one after the other over ``conn``, each body checked."""
    headers = {"Accept": accept}
    for _ in range(warmup):
        with contextlib.suppress(rawhttp.HttpError):
            await conn.get(url, headers)
    started = time.perf_counter()
    for n in range(requests):
        if not budget_left(started, n):
            measure.capped = requests - n
            break
        try:
            answer = await conn.get(url, headers, keep_body=True)
        except rawhttp.HttpError as exc:
            measure.errors.append(str(exc))
            continue
        measure.statuses[answer.status] += 1
        if answer.status != 200:
            measure.errors.append(f"HTTP {answer.status}: {squeeze(answer.text)}")
            continue
        items, error = check(answer)
        if error and len(measure.errors) < 5:
            measure.errors.append(error)
        record(measure, answer, items)
    measure.elapsed = time.perf_counter() - started
