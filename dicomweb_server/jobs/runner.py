"""One runner per process for the background work every context exports (DESIGN.md, jobs/).

Each context lists its processors in its own ``jobs.py`` as ``JOBS: dict[str, Processor]``;
``app.py`` merges them, as it merges routes, binds each to the long-lived parts the lifespan
built (``Parts``), and starts one ``Runner`` with them.  A processor is chosen by kind, like
dcm4chee's ``TaskProcessor.process(task)``; its schedule is data (a period, a wake-up event,
a short gathering delay), never a hand-written loop.

The runner never dies of a processor: an exception is logged with its traceback and the
processor is run again after an exponential back-off (1 s, 2 s, ... up to a minute); a
processor that handles its own failures returns how soon it wants to run again instead.
Stopping cancels every processor and waits for it.

A durable queue (enqueue inside the caller's transaction, claim with a lease, dead letter)
comes with the Orders issue: its claim loop will be one more processor here, woken by
``LISTEN`` or by its period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from dicomweb_server.db.pool import Pool
from dicomweb_server.settings import Settings
from dicomweb_server.storage.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# One run of a processor.  None: wait for the next period or wake-up as usual; a number:
# run again after that many seconds even if nothing wakes it (a retry it chose itself).
Step = Callable[[], Awaitable[float | None]]

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class Job:
    """A processor bound to the parts it works on, and when to run it.

    ``every``: seconds between runs (None: only when woken).  ``wakeup``: an event that runs it
    early (set by whoever has work for it).  ``gather``: seconds to wait after a wake-up before
    running, so that a burst becomes one run.  ``at_start``: run once as soon as it starts.
    """

    step: Step
    every: float | None = None
    wakeup: asyncio.Event | None = None
    gather: float = 0.0
    at_start: bool = False


@dataclass(frozen=True)
class Parts:
    """The long-lived parts the lifespan built, for processors to bind to.

    The parts every adapter has are fields; a context's own (the audit trail) are found by
    their type, so this module needs to know nothing of the contexts above it.
    """

    settings: Settings
    pool: Pool
    store: ObjectStore
    others: tuple[object, ...] = field(default=())

    def get(self, kind: type[T]) -> T:
        for part in self.others:
            if isinstance(part, kind):
                return part
        raise LookupError(f"no {kind.__name__} among the parts")


# What a context exports: given the parts, the job to run, or None when its settings turn it off.
Processor = Callable[[Parts], Job | None]


def bind(processors: Mapping[str, Processor], parts: Parts) -> dict[str, Job]:
    """The jobs of ``processors`` bound to ``parts``; the ones their settings turn off are left out."""
    jobs = {}
    for kind, processor in processors.items():
        job = processor(parts)
        if job is not None:
            jobs[kind] = job
    return jobs


class Runner:
    """Runs each job in a task of its own until stopped; an async context manager (the lifespan's)."""

    def __init__(
        self, jobs: Mapping[str, Job], backoff_first: float = BACKOFF_FIRST, backoff_max: float = BACKOFF_MAX
    ):
        self.jobs = dict(jobs)
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.failures: dict[str, int] = dict.fromkeys(self.jobs, 0)  # consecutive, per kind
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Runner:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(kind, job), name=f"job:{kind}") for kind, job in self.jobs.items()
        ]

    async def stop(self) -> None:
        """Cancel every processor and wait until each has stopped."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self, kind: str, job: Job) -> None:
        # A pause (a retry, or the first run of an at_start job) is slept out whatever wakes the
        # job meanwhile: a failing processor is not run once per wake-up.
        pause: float | None = 0.0 if job.at_start else None
        while True:
            if pause is None:
                woken = await _wait(job.wakeup, job.every)
            else:
                await asyncio.sleep(pause)
                woken = True
            if woken and job.gather > 0:
                await asyncio.sleep(job.gather)
            if job.wakeup is not None:
                job.wakeup.clear()  # what arrives from here on wakes the next run
            try:
                pause = await job.step()
            except Exception:
                self.failures[kind] += 1
                pause = min(self.backoff_max, self.backoff_first * 2 ** (self.failures[kind] - 1))
                log.exception(
                    "background job failed; retrying",
                    extra={"event": "job_failed", "job": kind, "retry_in": pause},
                )
            else:
                self.failures[kind] = 0


async def _wait(wakeup: asyncio.Event | None, delay: float | None) -> bool:
    """Until ``delay`` seconds pass (None: forever) or ``wakeup`` is set; True when woken."""
    if wakeup is None:
        if delay is None:
            await asyncio.Event().wait()  # nothing will ever run it: wait to be cancelled
        await asyncio.sleep(delay or 0)
        return False
    if wakeup.is_set():
        return True
    if delay is None:
        await wakeup.wait()
        return True
    try:
        async with asyncio.timeout(delay):
            await wakeup.wait()
    except TimeoutError:
        return False
    return True
