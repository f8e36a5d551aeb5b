"""QIDO-RS measurement: one request at a time over one keep-alive connection, counts checked.

Latency is taken in the client from sending the request to having the whole body (JSON parsing
excluded); for ours the Warning header's remaining count (PS3.18 8.3.4.4 ... "There are N additional
results") is checked against the model too.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from bench.corpus.population import QidoSpec
from bench.harness.target import Endpoint
from bench.harness.workload import Result
from bench.qido.queries import ACCEPT, QUERY_TYPES, Probe

BUDGET_SECONDS = 6.0  # per query type: measured requests stop after this long ...
MIN_ITERATIONS = 10  # ... once at least this many were measured


@dataclass
class QueryStats:
    key: str
    title: str
    example: str
    latencies: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warning_problems: list[str] = field(default_factory=list)  # ours: Warning header count wrong
    capped: int = 0  # measured requests left out by the time budget

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def mismatches(self) -> list[tuple[str, int, int]]:
        return [
            (p, got, want)
            for p, got, want in zip(self.paths, self.counts, self.expected, strict=True)
            if got != want
        ]

    @property
    def count_text(self) -> str:
        if not self.counts:
            return "-"
        lo, hi = min(self.counts), max(self.counts)
        return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass
class LoadStats:
    method: str
    instances: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds (1M load)
    notes: list[str] = field(default_factory=list)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


@dataclass
class QidoDetail:
    scale: str  # "20k" or "1M"
    spec: QidoSpec
    studies: int
    series: int
    instances: int
    load: LoadStats
    queries: dict[str, QueryStats]
    plans: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {"page": verdict, ...}
    settled: dict[str, QueryStats] | None = None  # ours at 20k: the same queries after VACUUM ANALYZE
    plan_doc: list[str] = field(default_factory=list)  # markdown section for docs/qido-plans.md
    plans_path: str | None = None


def _remaining(header: str | None) -> int | None:
    if not header:
        return None
    m = re.search(r"There are (\d+) additional results", header)
    return int(m.group(1)) if m else None


async def run_queries(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    probes: dict[str, tuple[list[Probe], list[Probe]]],
    check_warning: bool,
    budget: float = BUDGET_SECONDS,
) -> dict[str, QueryStats]:
    """Every query type in turn: the warm-up probes, then the measured ones, one request at a time.

    A slow target stops a query type's measured requests after ``budget`` seconds (at least
    ``MIN_ITERATIONS`` requests), and its warm-up after half that.
    """
    gc.collect()
    gc.disable()  # the client's own collector pauses must not count against a server
    try:
        return await _timed_queries(client, endpoint, probes, check_warning, budget)
    finally:
        gc.enable()


async def _timed_queries(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    probes: dict[str, tuple[list[Probe], list[Probe]]],
    check_warning: bool,
    budget: float,
) -> dict[str, QueryStats]:
    out: dict[str, QueryStats] = {}
    root = endpoint.dicomweb_root
    for q in QUERY_TYPES:
        warm, measured = probes[q.key]
        stats = QueryStats(q.key, q.title, q.example)
        started = time.perf_counter()
        for probe in warm:
            if time.perf_counter() - started > budget / 2:
                break
            try:
                await client.get(root + probe.path, headers=ACCEPT)
            except httpx.HTTPError as exc:
                stats.errors.append(f"warm-up {probe.path}: {type(exc).__name__}: {exc}")
        started = time.perf_counter()
        for n, probe in enumerate(measured):
            if n >= MIN_ITERATIONS and time.perf_counter() - started > budget:
                stats.capped = len(measured) - n
                break
            t0 = time.perf_counter()
            try:
                response = await client.get(root + probe.path, headers=ACCEPT)
            except httpx.HTTPError as exc:
                stats.errors.append(f"{probe.path}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            if response.status_code not in (200, 204):
                stats.errors.append(f"{probe.path}: HTTP {response.status_code}: {response.text[:200]}")
                continue
            body = orjson.loads(response.content) if response.content else []
            stats.latencies.append(elapsed)
            stats.counts.append(len(body))
            stats.expected.append(probe.expected)
            stats.paths.append(probe.path)
            if check_warning:
                remaining = _remaining(response.headers.get("warning"))
                want = probe.total - probe.offset - len(body)
                if (remaining or 0) != max(0, want) and not (remaining is None and want <= 0):
                    stats.warning_problems.append(
                        f"{probe.path}: Warning says {remaining} more, model {want}"
                    )
        out[q.key] = stats
    return out


def query_client(endpoint: Endpoint) -> httpx.AsyncClient:
    """One keep-alive connection: requests are sequential and stay on one server worker."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits, headers=endpoint.headers)


def details(result: Result | None) -> QidoDetail | None:
    extra: Any = result.extra if result is not None else None
    return extra if isinstance(extra, QidoDetail) else None
