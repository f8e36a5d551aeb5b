"""The durable queue: pgqueuer behind the small interface the contexts use (DESIGN.md, jobs/).

Why pgqueuer (1.6, pinned) rather than procrastinate: it speaks asyncpg, the driver the index
already uses, so ``enqueue`` runs on the caller's connection and commits in the caller's
transaction (an order's status, its event and its follow-up step commit together or not at
all) without a second pool or driver; it claims with ``FOR UPDATE SKIP LOCKED``, wakes
consumers with LISTEN/NOTIFY, re-runs a job whose process died (its heartbeat goes stale),
and re-queues a job that asks for it (``Later``).  It is young and has one main maintainer,
so nothing outside this module names it: replacing it touches this file and migration 0009.

Queue rows are wake-ups, never the truth (WORKFLOW.md): each step reads its domain row,
does nothing if the row has moved on, and a reconciler (workflow/jobs.py) enqueues again
whatever is due without a live entry.  ``key`` deduplicates: a second ``enqueue`` of a key
that is queued or running does nothing.  Payloads are a few ids, never data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import orjson
from pgqueuer import AsyncpgPoolDriver, Queries, QueueManager, RetryRequested
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from dicomweb_server.db import queue as sql
from dicomweb_server.db.pool import Connection, Pool

log = logging.getLogger(__name__)

# A step of background work: called with the payload it was enqueued with.
Step = Callable[[dict[str, Any]], Awaitable[None]]


class Later(Exception):
    """Raised by a step whose row is not due yet: run the same entry again after ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"not due for {seconds:.1f} s")
        self.seconds = max(0.0, seconds)


async def enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    key: str | None = None,
    after: float = 0.0,
    priority: int = 0,
) -> None:
    """Queue one run of ``kind`` on ``conn`` (in its transaction), ``after`` seconds from now.

    With ``key``, nothing is queued while an entry with that key is queued or running."""
    queries = Queries(AsyncpgDriver(conn))
    await queries.enqueue(
        kind,
        orjson.dumps(payload),
        priority,
        timedelta(seconds=after) if after > 0 else None,
        key,
        on_conflict="skip",
    )


async def live_keys(conn: Connection, keys: list[str]) -> set[str]:
    """Which of ``keys`` have an entry queued or running (for the reconciler)."""
    return await sql.live_keys(conn, keys)


class Consumer:
    """Runs the queued steps of this process: one pgqueuer ``QueueManager`` on the pool.

    Every server process runs one; pgqueuer's claim makes sure each entry runs in one of them at
    a time, and an entry whose process died (no heartbeat for ``heartbeat_seconds``) runs again.
    """

    def __init__(
        self, pool: Pool, steps: Mapping[str, Step], heartbeat_seconds: float = 30.0, concurrency: int = 8
    ):
        self.pool = pool
        self.steps = dict(steps)
        self.heartbeat = timedelta(seconds=heartbeat_seconds)
        self.concurrency = concurrency
        self.manager: QueueManager | None = None

    async def run(self) -> None:
        """Consume until cancelled (a ``jobs.runner`` job: the runner restarts it after a failure)."""
        manager = QueueManager(Queries(AsyncpgPoolDriver(self.pool)))
        for kind, step in self.steps.items():
            manager.entrypoint(kind)(self._bind(kind, step))
        self.manager = manager
        try:
            await manager.run(
                dequeue_timeout=timedelta(seconds=5),
                batch_size=max(1, self.concurrency // 2),
                max_concurrent_tasks=self.concurrency,  # pgqueuer: at least twice the batch
                heartbeat_timeout=self.heartbeat,
                log_aggregation_interval=timedelta(seconds=60),
            )
        finally:
            manager.shutdown.set()

    @staticmethod
    def _bind(kind: str, step: Step) -> Callable[[Job], Awaitable[None]]:
        async def handle(job: Job) -> None:
            payload = orjson.loads(job.payload) if job.payload else {}
            try:
                await step(payload)
            except Later as later:
                raise RetryRequested(timedelta(seconds=later.seconds), str(later)) from None
            except asyncio.CancelledError:
                raise
            except Exception:
                # The entry is dropped (pgqueuer logs it); the reconciler queues the step again.
                log.exception("background step failed", extra={"event": "step_failed", "job": kind})
                raise

        handle.__name__ = kind.replace(".", "_")
        return handle
