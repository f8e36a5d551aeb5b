"""Access overhead: what the token guard plus the rate limiter add to a QIDO-RS search (p50).

The server has no switch that turns the access layer off (by design), and a black-box harness
cannot time the handler without its guard. So the baseline is ours from the commit just before
the access layer landed (``ours-noauth``, an exported ``git archive``; see ``--baseline-rev``),
loaded with the same corpus and asked the same queries in the same run. Against it:

- ``ours``: a valid bearer token on every request, limiter in process memory (the default);
- ``ours-redis``: the same with the limiter's counters in a Redis of its own
  (``DICOMWEB_RATE_LIMIT_STORAGE=async+redis://127.0.0.1:PORT/15``).

The limit is far above what the run sends (it never refuses), but every request is counted: each
answer must carry the ``RateLimit`` header, which the server leaves out when the limiter failed open
(storage unreachable). Overhead = p50(variant) - p50(ours-noauth). The same query both ways: a
study-level search by PatientID with a small result (``limit=10``) on the QIDO 20k corpus, loaded by
STOW, sequential over one keep-alive connection with the lean client (bench/rawhttp.py).
``GET /healthz`` (unguarded in both) is timed the same way as a check that both servers' HTTP
floors are alike.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from bench.corpus.population import Population
from bench.harness import rawhttp
from bench.harness.sampling import ProcessSampler, wait_until_quiet
from bench.harness.stow_client import post_all
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, Workload
from bench.qido.queries import ACCEPT, Probe, model

WORKLOAD = "access-qido"
BASELINE = "ours-noauth"
VARIANTS = {"ours": "token + limiter in memory", "ours-redis": "token + limiter in Redis"}
TARGET_MS = 0.3  # the issue: auth plus rate limiting add at most 0.3 ms to QIDO p50
LIMIT = 10
PROBES = 200  # distinct PatientIDs, cycled


@dataclass
class AccessDetail:
    query: str  # example path
    warmup: int
    qido: list[float] = field(default_factory=list)  # seconds
    healthz: list[float] = field(default_factory=list)
    rate_header: str = ""  # a RateLimit header as answered ("" for the baseline)
    storage_note: str = ""

    def p(self, which: str, q: float) -> float:
        values = getattr(self, which)
        return float(np.percentile(values, q)) * 1000 if values else float("nan")


def probes(pop: Population) -> list[Probe]:
    m = model(pop)
    rng = random.Random(f"{pop.spec.seed}/access")
    patients = sorted(m.by_patient)
    chosen = rng.sample(patients, min(PROBES, len(patients)))
    return [
        Probe(f"/studies?PatientID={pid}&limit={LIMIT}", min(m.by_patient[pid], LIMIT), m.by_patient[pid])
        for pid in chosen
    ]


def iterations(ctx: Context) -> tuple[int, int]:
    """(warm-up, measured) requests: enough for a p50 with a resolution well under 0.3 ms."""
    quick = ctx.qido.small.studies < 800
    return (100, 500) if quick else (300, 3000)


async def _measure(
    conn: rawhttp.Connection,
    root: str,
    paths: list[Probe],
    n: int,
    out: list[float] | None,
    errors: list[str],
    check: Callable[[rawhttp.Answer], str | None],
) -> None:
    for k in range(n):
        probe = paths[k % len(paths)]
        try:
            answer = await conn.get(root + probe.path, ACCEPT, keep_body=True)
        except rawhttp.HttpError as exc:
            errors.append(f"{probe.path}: {exc}")
            continue
        if answer.status != 200:
            errors.append(f"{probe.path}: HTTP {answer.status}: {answer.text[:200]}")
            continue
        got = len(orjson.loads(bytes(answer.body))) if answer.body else 0
        if got != probe.expected:
            errors.append(f"{probe.path}: {got} results, model {probe.expected}")
        if problem := check(answer):
            errors.append(f"{probe.path}: {problem}")
        if out is not None:
            out.append(answer.elapsed)


async def run(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    corpus = ctx.qido.corpus
    assert corpus is not None
    pop = corpus.population
    print(f"[{endpoint.target}] {WORKLOAD}: loading {pop.instance_count} instances by STOW ...", flush=True)
    posted = await post_all(endpoint, corpus.bodies, ctx.concurrency)
    wait_until_quiet(0.10, 30.0, endpoint.target)
    warm, measured = iterations(ctx)
    paths = probes(pop)
    detail = AccessDetail(paths[0].path, warm)
    authorized = "authorization" in {k.lower() for k in endpoint.headers}
    errors = [f"load: {e}" for e in posted.errors[:5]]

    def rate_checked(answer: rawhttp.Answer) -> str | None:
        header = answer.headers.get("ratelimit", "")
        if authorized and not header:
            return "no RateLimit header: the limiter did not count this request (failed open?)"
        detail.rate_header = header
        return None

    aux = endpoint.aux_roots()
    gc.collect()
    gc.disable()  # the client's collector pauses must not land in one variant's figures
    try:
        async with rawhttp.Connection(endpoint.base_url, 60.0, endpoint.headers) as conn:
            await _measure(conn, endpoint.dicomweb_root, paths, warm, None, errors, rate_checked)
            with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
                t0 = time.perf_counter()
                root = endpoint.dicomweb_root
                await _measure(conn, root, paths, measured, detail.qido, errors, rate_checked)
                elapsed = time.perf_counter() - t0
            for k in range(warm + measured // 2):  # the unguarded floor, for comparison only
                t1 = time.perf_counter()
                answer = await conn.get(endpoint.base_url + "/healthz", {})
                if answer.status == 200 and k >= warm:
                    detail.healthz.append(time.perf_counter() - t1)
    finally:
        gc.enable()
    if note := endpoint.notes.get("rate-limit storage"):
        detail.storage_note = note
    print(
        f"[{endpoint.target}] {WORKLOAD}: QIDO p50 {detail.p('qido', 50):.3f} ms, p95 "
        f"{detail.p('qido', 95):.3f} ms over {len(detail.qido)}; "
        f"/healthz p50 {detail.p('healthz', 50):.3f} ms"
        + (f"; {len(errors)} ERRORS, first: {errors[0]}" if errors else ""),
        flush=True,
    )
    return Result(
        workload=WORKLOAD,
        requests=len(detail.qido),
        instances=len(detail.qido),  # so that "inst/s" (which picks the median round) is requests/s
        payload_bytes=corpus.payload_bytes,  # the load, for the stored-instance check
        elapsed=elapsed,
        latencies=detail.qido,
        proc=sampler.stats(),
        sent_instances=pop.instance_count,
        errors=errors[:20],
        extra=detail,
    )


def details(result: Any) -> AccessDetail | None:
    extra = getattr(result, "extra", None)
    return extra if isinstance(extra, AccessDetail) else None


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        WORKLOAD,
        "Access overhead: QIDO p50 with token + rate limiter vs. the commit before the access layer",
        run,
        frozenset({"ours", "ours-redis", "ours-noauth"}),
        session="access",
    ),
)
