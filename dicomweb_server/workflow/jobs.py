"""The workflow's background work: its queued steps and the reconciler (DESIGN.md, jobs/).

``STEPS`` are the durable steps, run by pgqueuer in whichever server process claims them
(jobs/queue.py): each reads its domain row and does nothing if the row has moved on, so a step
run twice (its process died after committing) changes nothing the second time.  ``JOBS`` are
this context's processors for the per-process runner: the queue's consumer, and the
reconciler, which queues again every step that is due and has no live queue entry: the rows
are the truth, so emptying the queue loses nothing; and the change feed's retention, which
deletes events older than ``event_retention_days`` (the feed answers 410 for a cursor before
them, workflow/feed.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from dicomweb_server import events
from dicomweb_server.db import analysis_jobs, arrival, orders, reports
from dicomweb_server.db.pool import connection, transaction
from dicomweb_server.jobs import queue
from dicomweb_server.jobs.runner import Job, Parts, Processor
from dicomweb_server.lifecycle import SETTLE_STEP, Status
from dicomweb_server.workflow import analysis, delivery, qc, stability

# A queued step, given the long-lived parts and its payload.
Step = Callable[[Parts, dict[str, Any]], Awaitable[None]]

STEPS: dict[str, Step] = {
    SETTLE_STEP: lambda parts, payload: stability.settle(parts.pool, parts.settings.workflow, payload),
    stability.QC_STEP: lambda parts, payload: qc.run(parts.pool, parts.store, payload),
    delivery.DELIVER_STEP: lambda parts, payload: delivery.deliver(
        parts.pool, parts.store, parts.settings, payload
    ),
    analysis.EXPIRE_STEP: lambda parts, payload: analysis.expire(
        parts.pool, parts.settings.workflow, payload
    ),
}

RECONCILE_EVERY = 5.0  # seconds between reconciler runs
GRACE = 5.0  # a row due this long without its step running is queued again
BATCH = 500


async def reconcile(parts: Parts) -> None:
    """Queue again what is due and has no live entry: overdue settle steps, orders left in
    ``stable`` without their QC step, reports whose order is still ``processing`` (their
    delivery step was lost), analysis claims whose lease ran out unseen."""
    async with connection(parts.pool) as conn:
        due = await arrival.overdue(conn, GRACE, BATCH)
        stale = await orders.orders_in(conn, Status.STABLE, BATCH, GRACE)
        undelivered = await reports.undelivered(conn, GRACE, BATCH)
        lapsed = await analysis_jobs.lapsed(conn, GRACE, BATCH)
    wanted: dict[str, tuple[str, dict[str, str]]] = {}
    for tenant, study in due:
        wanted[f"{SETTLE_STEP}:{tenant}:{study}"] = (SETTLE_STEP, {"tenant": tenant, "study": study})
    for tenant, order_id in stale:
        wanted[f"{stability.QC_STEP}:{order_id}"] = (stability.QC_STEP, {"tenant": tenant, "order": order_id})
    for tenant, report_id in undelivered:
        wanted[delivery.deliver_key(report_id)] = (
            delivery.DELIVER_STEP,
            {"tenant": tenant, "report": report_id},
        )
    for tenant, job_id in lapsed:
        wanted[f"{analysis.EXPIRE_STEP}:{job_id}"] = (analysis.EXPIRE_STEP, {"tenant": tenant, "job": job_id})
    if not wanted:
        return
    async with transaction(parts.pool) as conn:
        live = await queue.live_keys(conn, list(wanted))
        for key, (kind, payload) in wanted.items():
            if key not in live:
                await queue.enqueue(conn, kind, payload, key=key)


PRUNE_EVERY = 60.0  # seconds between runs of the change feed's retention
PRUNE_BATCH = 10_000  # events deleted per transaction, so no one transaction holds many locks


async def prune_events(parts: Parts, batch: int = PRUNE_BATCH) -> None:
    """Delete the events older than the retention, a batch per transaction, until a batch comes
    back short: a backlog (the server was down) is cleared in one run without one huge delete."""
    older_than = parts.settings.workflow.event_retention_days * 86_400
    async with connection(parts.pool) as conn:
        while await events.prune(conn, older_than, batch) >= batch:
            pass


def prune_job(parts: Parts, every: float = PRUNE_EVERY, batch: int = PRUNE_BATCH) -> Job:
    """The retention job; tests bind a shorter period and batch with ``partial``."""
    return Job(partial(prune_events, parts, batch), every=every)


def consumer_job(parts: Parts) -> Job:
    steps = {kind: partial(step, parts) for kind, step in STEPS.items()}
    consumer = queue.Consumer(parts.pool, steps, parts.settings.workflow.queue_heartbeat_seconds)
    return Job(_forever(consumer.run), at_start=True)


def _forever(run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[float | None]]:
    async def step() -> float | None:
        await run()
        return 1.0  # it returned (shut down): start it again after a second

    return step


JOBS: dict[str, Processor] = {
    "workflow.queue": consumer_job,
    "workflow.reconcile": lambda parts: Job(partial(reconcile, parts), every=RECONCILE_EVERY),
    "events.prune": prune_job,
}
