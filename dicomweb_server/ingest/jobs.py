"""The ingest context's background work: the garbage sweep and the statistics keeper.

``JOBS`` is merged by ``app.py`` with the other contexts' and run by ``jobs.runner``.
"""

from __future__ import annotations

from dicomweb_server import events
from dicomweb_server.db.pool import Pool, connection
from dicomweb_server.db.statistics import analyze_if_stale
from dicomweb_server.ingest import sweep
from dicomweb_server.jobs.runner import Job, Parts, Processor

STATISTICS_EVERY = 1.0  # seconds between looks at the outbox


def sweep_job(parts: Parts) -> Job | None:
    """Every ``DICOMWEB_GC_INTERVAL_SECONDS`` (0: off), one sweep (invariant I3, ingest/sweep.py)."""
    interval = parts.settings.storage.gc_interval_seconds
    if interval <= 0:
        return None
    grace = parts.settings.storage.gc_grace_seconds

    async def step() -> None:
        await sweep.sweep(parts.pool, parts.store, grace)

    return Job(step, every=interval)


class StatisticsKeeper:
    """Keeps the planner's statistics current after ingest (``db.analyze_if_stale``).

    Autovacuum looks once a minute; searches right after a bulk ingest would otherwise be
    planned without statistics.  New ``instance.stored`` events (the outbox's newest id past a
    cursor kept in memory, starting from the newest at start-up; ingest appends them in the
    instances' own transaction) make it look, at most once a second; the check itself takes
    under a millisecond.
    """

    def __init__(self, pool: Pool):
        self.pool = pool
        self.cursor: int | None = None  # the last event id read; None until the first step

    async def step(self) -> None:
        async with connection(self.pool) as conn:
            newest = await events.latest(conn)
            fresh = self.cursor is not None and newest > self.cursor
            self.cursor = newest
            if fresh:
                await analyze_if_stale(conn)


def statistics_job(parts: Parts) -> Job:
    return Job(parts.get(StatisticsKeeper).step, every=STATISTICS_EVERY)


JOBS: dict[str, Processor] = {"ingest.sweep": sweep_job, "index.statistics": statistics_job}
