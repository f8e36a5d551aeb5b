"""Workloads: each one runs against a started target and returns a Result.

To add a scenario (QIDO searches, WADO retrieves, ...) write an async function with the
``WorkloadFn`` signature and append a ``Workload`` to ``WORKLOADS`` (a goal on it goes in
``report.GOALS``). Workloads of one ``session`` run in ``WORKLOADS`` order on one fresh server per
target, so a retrieve workload can use what ``stow-ct512`` stored (``ctx.corpora`` holds every UID);
a workload that needs an index of its own (the QIDO ones) gets its own session. Build URLs from
``endpoint.dicomweb_root``, and wrap the measured part in ``ProcessSampler`` as below.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pydicom

from bench.corpus.ct import Corpus, Series
from bench.corpus.multipart import CONTENT_TYPE, BigBodyPlan, build_body
from bench.harness import rawhttp
from bench.harness.sampling import ProcessSampler, ProcStats, settle
from bench.harness.target import Endpoint

STOW_HEADERS = {"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
REFERENCED_SOP_SEQ, FAILED_SOP_SEQ = "00081199", "00081198"
WARNING_REASON, FAILURE_REASON = "00081196", "00081197"


@dataclass
class Context:
    corpora: dict[str, Corpus]
    concurrency: int = 2
    big_gib: float = 2.0
    qido: Any = None  # bench.qido.QidoOptions when a QIDO workload is selected
    wado: Any = None  # bench.wado.WadoOptions when a retrieve workload is selected
    _bodies: dict[str, tuple[list[bytes], list[bytes]]] = field(default_factory=dict)

    def bodies(self, corpus: str) -> tuple[list[bytes], list[bytes]]:
        """(warm-up, measured) request bodies, one per series, built once and reused for every target."""
        if corpus not in self._bodies:
            c = self.corpora[corpus]
            self._bodies[corpus] = (
                [build_body(s.instances) for s in c.warmup],
                [build_body(s.instances) for s in c.measured],
            )
        return self._bodies[corpus]


@dataclass
class Result:
    workload: str
    requests: int
    instances: int
    payload_bytes: int  # DICOM bytes in the measured requests (multipart framing excluded)
    elapsed: float
    latencies: list[float]
    proc: ProcStats
    sent_instances: int  # everything sent to the target, warm-up included (for the stored-count check)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. HTTP 202 although every instance was stored
    extra: Any = None  # workload-specific detail (bench.qido.QidoDetail)
    query_seconds: float = 0.0  # QIDO: wall time of the measured queries

    @property
    def cpu_ms_per_instance(self) -> float:
        return (self.proc.app_cpu + self.proc.aux_cpu) * 1000 / self.instances if self.instances else 0.0

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.elapsed if self.elapsed else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / 1e6 / self.elapsed if self.elapsed else 0.0

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def _reasons(items: list[dict[str, Any]], tag: str) -> str:
    codes = Counter(f"0x{item[tag]['Value'][0]:04X}" for item in items if item.get(tag, {}).get("Value"))
    return ", ".join(f"{code} x{n}" for code, n in codes.items())


def check_response(
    endpoint: Endpoint, code: int, content: bytes, headers: Mapping[str, str], instances: int, body_bytes: int
) -> tuple[str | None, str | None]:
    """(error, warning): error if not every instance was stored; warning if stored but not a plain 200."""
    text = content.decode(errors="replace")
    if code not in (200, 202, 409):
        return f"HTTP {code}: {text[:300]}", None
    try:
        payload = json.loads(content)
    except ValueError:
        return f"HTTP {code}, not JSON ({headers.get('content-type')}): {text[:200]}", None
    if not endpoint.stores_dicom:
        got = payload.get("received")
        return (None if got == body_bytes else f"sink received {got} of {body_bytes} bytes"), None
    stored = payload.get(REFERENCED_SOP_SEQ, {}).get("Value", [])
    failed = payload.get(FAILED_SOP_SEQ, {}).get("Value", [])
    summary = f"HTTP {code}: stored {len(stored)}/{instances}, failed {len(failed)}"
    if failed:
        summary += f" (failure reasons {_reasons(failed, FAILURE_REASON)})"
    if warned := _reasons(stored, WARNING_REASON):
        summary += f" (warning reasons {warned})"
    if header := headers.get("warning"):
        summary += f" (Warning: {header})"
    if failed or len(stored) != instances:
        return summary, None
    return None, (summary if code != 200 or warned else None)


@dataclass
class Posted:
    latencies: list[float]
    errors: list[str]
    warnings: list[str]
    elapsed: float


async def _post_all(endpoint: Endpoint, jobs: Sequence[tuple[bytes, int]], concurrency: int) -> Posted:
    """POST each (body, instance count), ``concurrency`` at a time, each over its own keep-alive connection
    with the lean client (bench/rawhttp.py); returns latencies, errors, wall time."""
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    errors: list[str] = []
    warnings: list[str] = []

    async def worker() -> None:
        async with rawhttp.Connection(endpoint.base_url, 900.0, endpoint.headers) as conn:
            while not queue.empty():
                body, count = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    answer = await conn.post(endpoint.stow_url, STOW_HEADERS, body)
                except rawhttp.HttpError as exc:
                    errors.append(str(exc))
                    continue
                latencies.append(time.perf_counter() - t0)
                error, warning = check_response(
                    endpoint, answer.status, bytes(answer.body), answer.headers, count, len(body)
                )
                if error:
                    errors.append(error)
                if warning:
                    warnings.append(warning)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Posted(latencies, errors, warnings, time.perf_counter() - t0)


def _count(series: Sequence[Series]) -> int:
    return sum(len(s.instances) for s in series)


WorkloadFn = Callable[[httpx.AsyncClient, Endpoint, Context], Awaitable[Result]]


def stow_workload(corpus_name: str) -> WorkloadFn:
    async def run(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
        corpus = ctx.corpora[corpus_name]
        warm_bodies, bodies = ctx.bodies(corpus_name)
        warm_jobs = [(b, len(s.instances)) for b, s in zip(warm_bodies, corpus.warmup, strict=True)]
        warm = await _post_all(endpoint, warm_jobs, ctx.concurrency)
        settle()
        jobs = [(b, len(s.instances)) for b, s in zip(bodies, corpus.measured, strict=True)]
        aux = endpoint.aux_roots()
        with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
            posted = await _post_all(endpoint, jobs, ctx.concurrency)
        return Result(
            workload=f"stow-{corpus_name}",
            requests=len(jobs),
            instances=corpus.measured_instances,
            payload_bytes=sum(s.nbytes for s in corpus.measured),
            elapsed=posted.elapsed,
            latencies=posted.latencies,
            proc=sampler.stats(),
            sent_instances=_count(corpus.warmup) + _count(corpus.measured),
            errors=[f"warm-up: {e}" for e in warm.errors] + posted.errors,
            warnings=[f"warm-up: {w}" for w in warm.warnings] + posted.warnings,
        )

    return run


async def big_body(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    """One STOW request of ~``ctx.big_gib`` GiB, streamed (chunked) part by part from one template."""
    series = ctx.corpora["ct512"].warmup[0]
    template = series.instances[0]
    ds = pydicom.dcmread(io.BytesIO(template), stop_before_pixels=True)
    parts = max(1, round(ctx.big_gib * 2**30 / len(template)))
    plan = BigBodyPlan(template, str(ds.SOPInstanceUID), series.study_uid, series.series_uid, parts)
    settle(1.0)
    aux = endpoint.aux_roots()
    with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
        t0 = time.perf_counter()
        errors: list[str] = []
        warning: str | None = None
        try:
            response = await client.post(endpoint.stow_url, content=plan.stream(), headers=STOW_HEADERS)
            error, warning = check_response(
                endpoint, response.status_code, response.content, response.headers, parts, plan.nbytes
            )
            if error:
                errors.append(error)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - t0
    return Result(
        workload="stow-big-body",
        requests=1,
        instances=parts,
        payload_bytes=parts * len(template),
        elapsed=elapsed,
        latencies=[elapsed],
        proc=sampler.stats(),
        sent_instances=parts,
        errors=errors,
        warnings=[warning] if warning else [],
    )


def _lazy(module: str, name: str) -> WorkloadFn:
    """``bench.<module>.<name>``, imported on first use (those modules import this one)."""

    async def run(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
        fn: WorkloadFn = getattr(importlib.import_module(f"bench.{module}"), name)
        return await fn(client, endpoint, ctx)

    return run


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    run: WorkloadFn
    applies_to: frozenset[str] | None = None  # None: every target
    suite: str = "stow"  # what --suite selects; "stow" workloads get the STOW tables in the report
    session: str = "stow"  # workloads of one session share one fresh server per target

    def applies(self, target: str) -> bool:
        if self.applies_to is None:  # every target except those that exist for one workload only
            return target not in NAMED_ONLY
        return target in self.applies_to


# Variants of ours that run only the workloads naming them (the access A/B).
NAMED_ONLY = frozenset({"ours-redis", "ours-noauth"})


WORKLOADS: tuple[Workload, ...] = (
    Workload("stow-ct512", "STOW 0.5 MB instances (one series per request)", stow_workload("ct512")),
    Workload("stow-small64", "STOW 9 KB instances (one series per request)", stow_workload("small64")),
    Workload("stow-big-body", "STOW one huge streamed request", big_body, frozenset({"ours", "sink"})),
    Workload(
        "qido-20k",
        "QIDO-RS searches, 20k instances loaded by STOW",
        _lazy("qido.workloads", "run_small"),
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        suite="qido",
        session="qido-20k",
    ),
    Workload(
        "qido-1m",
        "QIDO-RS searches, 1M instances COPYed into the index",
        _lazy("qido.workloads", "run_big"),
        frozenset({"ours"}),
        suite="qido",
        session="qido-1m",
    ),
    Workload(
        "wado-study",
        "WADO-RS whole-study retrieve",
        _lazy("wado.workloads", "run_study"),
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        suite="retrieve",
        session="retrieve",
    ),
    Workload(
        "wado-metadata",
        "WADO-RS study metadata",
        _lazy("wado.workloads", "run_metadata"),
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        suite="retrieve",
        session="retrieve",
    ),
    Workload(
        "wado-frames",
        "WADO-RS single frames",
        _lazy("wado.workloads", "run_frames"),
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        suite="retrieve",
        session="retrieve",
    ),
    Workload(
        "wado-big",
        "WADO-RS 2 GiB study to a slow client",
        _lazy("wado.workloads", "run_big"),
        frozenset({"ours", "orthanc-sqlite"}),
        suite="retrieve",
        session="retrieve-big",
    ),
    Workload(
        "access-qido",
        "Access overhead: QIDO p50 with token + rate limiter vs. the commit before the access layer",
        _lazy("access.workload", "run"),
        frozenset({"ours", "ours-redis", "ours-noauth"}),
        suite="access",
        session="access",
    ),
)
SUITES = tuple(dict.fromkeys(w.suite for w in WORKLOADS))
