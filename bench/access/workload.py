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
from bench.harness.outcome import Outcomes
from bench.harness.sampling import ProcessSampler, wait_until_quiet
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, _post_all
from bench.qido.workloads import ACCEPT, Probe, model

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
    posted = await _post_all(endpoint, corpus.bodies, ctx.concurrency)
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


# ---------------------------------------------------------------------------
# Report


def details(result: Any) -> AccessDetail | None:
    extra = getattr(result, "extra", None)
    return extra if isinstance(extra, AccessDetail) else None


def _detail(outcomes: Outcomes, target: str) -> AccessDetail | None:
    outcome = outcomes.get(target)
    return details(outcome.valid(WORKLOAD)) if outcome is not None else None


def overhead(variant: str) -> Callable[[Outcomes], float | None]:
    """p50(variant) - p50(baseline), ms."""

    def compute(outcomes: Outcomes) -> float | None:
        a, b = _detail(outcomes, variant), _detail(outcomes, BASELINE)
        return a.p("qido", 50) - b.p("qido", 50) if a and b else None

    return compute


def progress_lines(target: str, result: Any) -> list[str]:
    return []  # run() prints its own line


def _verdict(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value <= TARGET_MS:
        return f"met ({TARGET_MS - value:.3f} ms to spare)"
    return f"MISSED by {value - TARGET_MS:.3f} ms"


def console_lines(outcomes: Outcomes) -> list[str]:
    lines = []
    for target, label in [(BASELINE, "no access layer (baseline)"), *VARIANTS.items()]:
        d = _detail(outcomes, target)
        if d is None:
            continue
        extra = ""
        if target != BASELINE:
            value = overhead(target)(outcomes)
            extra = f", overhead {value:+.3f} ms: {_verdict(value)}" if value is not None else ""
        lines.append(
            f"  access {target:<12} {label:<28} QIDO p50 {d.p('qido', 50):.3f} ms, "
            f"p95 {d.p('qido', 95):.3f} ms, /healthz p50 {d.p('healthz', 50):.3f} ms{extra}"
        )
    return ["", "Access overhead (QIDO p50):", *lines] if lines else []


def markdown_lines(outcomes: Outcomes, baseline_rev: str = "") -> list[str]:
    rows = []
    for target, label in [(BASELINE, "no access layer (baseline)"), *VARIANTS.items()]:
        outcome = outcomes.get(target)
        if outcome is None:
            continue
        d = _detail(outcomes, target)
        if d is None:
            result = outcome.results.get(WORKLOAD)
            failed = f"{len(result.errors)} errors" if result and result.errors else "not run"
            why = outcome.skipped or failed
            rows.append([target, label, "-", "-", "-", "-", "-", why.splitlines()[0]])
            continue
        value = overhead(target)(outcomes) if target != BASELINE else None
        rows.append(
            [
                target,
                label + (f" ({outcome.notes['source']})" if "source" in outcome.notes else ""),
                f"{d.p('qido', 50):.3f}",
                f"{d.p('qido', 95):.3f}",
                f"{d.p('healthz', 50):.3f}",
                str(len(d.qido)),
                f"{value:+.3f}" if value is not None else "-",
                _verdict(value) if target != BASELINE else "baseline",
            ]
        )
    if not rows:
        return []
    base = _detail(outcomes, BASELINE)
    example = base.query if base else next((d.query for t in VARIANTS if (d := _detail(outcomes, t))), "")
    header = [
        "target",
        "access layer",
        "QIDO p50 ms",
        "p95 ms",
        "/healthz p50 ms",
        "requests",
        "p50 overhead ms",
        f"goal ≤ {TARGET_MS} ms",
    ]
    out = ["", "## Access overhead", ""]
    out += [
        "Auth plus rate limiting on QIDO p50 (goal: at most "
        f"{TARGET_MS} ms). Same query, same corpus, same run: `GET /dicomweb{example}` "
        f"(one of {PROBES} PatientIDs in turn, at most {LIMIT} results) on the QIDO 20k corpus "
        "loaded by STOW, "
        "sequential over one keep-alive connection. Baseline: ours from the commit just before the access "
        f"layer{f' ({baseline_rev})' if baseline_rev else ''}, which has no token guard, limiter or audit "
        "trail; no in-process switch exists to turn them off. The variants send a valid bearer token "
        "(client credentials, dev client) and every answer must carry a `RateLimit` header (the limiter "
        "counted it; the limit is 1e9 per window, never reached). Overhead = variant p50 - baseline p50; "
        "it also holds the per-request audit record and any other change between the two commits "
        "on this path. `/healthz` (unguarded) is the HTTP floor of each server.",
        "",
    ]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    sample = next((d.rate_header for t in VARIANTS if (d := _detail(outcomes, t)) and d.rate_header), "")
    if sample:
        out += ["", f"A `RateLimit` header as answered: `{sample}`."]
    return out
