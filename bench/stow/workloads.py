"""STOW-RS workloads: one series per request (0.5 MB and 9 KB instances), and one huge streamed body."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import httpx
import pydicom

from bench.corpus.ct import Series
from bench.corpus.multipart import BigBodyPlan
from bench.harness.sampling import ProcessSampler, settle
from bench.harness.stow_client import STOW_HEADERS, check_response, post_all
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, Workload, WorkloadFn


def _count(series: Sequence[Series]) -> int:
    return sum(len(s.instances) for s in series)


def stow_workload(corpus_name: str) -> WorkloadFn:
    async def run(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
        corpus = ctx.corpora[corpus_name]
        warm_bodies, bodies = ctx.bodies(corpus_name)
        warm_jobs = [(b, len(s.instances)) for b, s in zip(warm_bodies, corpus.warmup, strict=True)]
        warm = await post_all(endpoint, warm_jobs, ctx.concurrency)
        settle()
        jobs = [(b, len(s.instances)) for b, s in zip(bodies, corpus.measured, strict=True)]
        aux = endpoint.aux_roots()
        with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
            posted = await post_all(endpoint, jobs, ctx.concurrency)
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


WORKLOADS: tuple[Workload, ...] = (
    Workload("stow-ct512", "STOW 0.5 MB instances (one series per request)", stow_workload("ct512")),
    Workload("stow-small64", "STOW 9 KB instances (one series per request)", stow_workload("small64")),
    Workload("stow-big-body", "STOW one huge streamed request", big_body, frozenset({"ours", "sink"})),
)
