"""The orders suite's workloads (issue #12 "Benchmark"), run on ours only, in one session (one
fresh server) in this order: claim throughput, commit latency, quiet-period lateness, the feed
under load, and last the 1M listing (it leaves a million orders behind).

Sizes: full / ``--quick``.  Each workload's figures are in ``Result.extra`` (``OrdersDetail``);
``requests``/``instances`` carry the count of what was measured so that the harness's round
median has something to sort by.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from bench.harness.sampling import ProcessSampler
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, Workload
from bench.orders import flow, scale
from bench.orders.common import OrdersDetail


@dataclass(frozen=True)
class Sizes:
    claim_orders: int
    bare_rows: int
    commits: int
    quiet_studies: int
    feed_seconds: float
    listing_orders: int
    listing_requests: int


FULL = Sizes(800, 20_000, 150, 100, 20.0, 1_000_000, 200)
QUICK = Sizes(150, 4_000, 40, 40, 5.0, 100_000, 50)
FEED_RATE = 1000


def sizes(ctx: Context) -> Sizes:
    return ctx.orders if isinstance(ctx.orders, Sizes) else FULL


def _workload(
    key: str, measure: Callable[[Endpoint, Sizes], Awaitable[OrdersDetail]], count: Callable[[Sizes], int]
) -> Callable[[httpx.AsyncClient, Endpoint, Context], Awaitable[Result]]:
    async def run(_client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
        s = sizes(ctx)
        errors: list[str] = []
        detail = OrdersDetail()
        with ProcessSampler(lambda: [endpoint.app_pid], endpoint.aux_roots) as sampler:
            t0 = time.perf_counter()
            try:
                detail = await measure(endpoint, s)
            except Exception as exc:  # a failed measurement is reported, not fatal to the run
                errors.append(f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            elapsed = time.perf_counter() - t0
        figures = ", ".join(f"{k} {v:.1f}" for k, v in detail.figures.items() if not k.endswith(".n"))
        print(f"[{endpoint.target}] {key}: {figures or errors[0]}", flush=True)
        n = count(s)
        return Result(
            workload=key,
            requests=n,
            instances=n,
            payload_bytes=0,
            elapsed=elapsed,
            latencies=[],
            proc=sampler.stats(),
            sent_instances=0,
            errors=errors,
            extra=detail,
        )

    return run


CLAIM, COMMIT, QUIET, FEED, LISTING = (
    "orders-claim",
    "orders-commit",
    "orders-quiet",
    "orders-feed",
    "orders-1m",
)
OURS = frozenset({"ours"})

WORKLOADS: tuple[Workload, ...] = (
    Workload(
        CLAIM,
        "Orders: claim -> complete -> delivered, 8 workers, vs. a bare SKIP LOCKED loop",
        _workload(
            CLAIM,
            lambda e, s: flow.claim_throughput(e, s.claim_orders, s.bare_rows),
            lambda s: s.claim_orders,
        ),
        OURS,
        session="orders",
    ),
    Workload(
        COMMIT,
        "Orders: commit -> study.stable (answer and feed)",
        _workload(COMMIT, lambda e, s: flow.commit_latency(e, s.commits), lambda s: s.commits),
        OURS,
        session="orders",
    ),
    Workload(
        QUIET,
        "Orders: quiet period -> study.stable",
        _workload(QUIET, lambda e, s: flow.quiet_lateness(e, s.quiet_studies), lambda s: s.quiet_studies),
        OURS,
        session="orders",
    ),
    Workload(
        FEED,
        "Orders: change feed reader under 1,000 events/s",
        _workload(
            FEED,
            lambda e, s: scale.feed_under_load(e, FEED_RATE, s.feed_seconds),
            lambda s: int(s.feed_seconds),
        ),
        OURS,
        session="orders",
    ),
    Workload(
        LISTING,
        "Orders: GET /api/v1/orders by status and patient at 1M orders",
        _workload(
            LISTING,
            lambda e, s: scale.listing_at_scale(e, s.listing_orders, s.listing_requests),
            lambda s: s.listing_requests,
        ),
        OURS,
        session="orders",
    ),
)
