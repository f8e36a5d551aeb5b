"""jobs.runner: processors run on their schedule, survive their own exceptions, stop on shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest

from dicomweb_server.jobs.runner import Job, Parts, Runner, bind
from dicomweb_server.settings import Settings, StorageSettings
from dicomweb_server.storage.files import FileStore


class Flaky:
    """A processor that fails its first ``failures`` runs, then counts successful ones."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0
        self.done = asyncio.Event()

    async def step(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"failure {self.calls}")
        self.done.set()


async def test_a_failing_processor_is_retried_with_back_off_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky(failures=2)
    steady = Flaky(failures=0)
    runs: list[float] = []

    async def timed() -> None:
        runs.append(asyncio.get_running_loop().time())
        await flaky.step()

    jobs = {"flaky": Job(timed, at_start=True), "steady": Job(steady.step, every=0.01)}
    runner = Runner(jobs, backoff_first=0.05, backoff_max=1.0)
    with caplog.at_level(logging.ERROR, logger="dicomweb_server.jobs.runner"):
        async with runner:
            async with asyncio.timeout(5):
                await flaky.done.wait()
            assert steady.calls >= 1
    assert flaky.calls == 3
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # 0.05 s, then doubled
    failed = [r for r in caplog.records if getattr(r, "event", None) == "job_failed"]
    assert [r.job for r in failed] == ["flaky", "flaky"]  # type: ignore[attr-defined]
    assert all(r.exc_info for r in failed)  # logged with the traceback
    assert runner.failures["flaky"] == 0  # reset by the success


async def test_a_wake_up_runs_the_processor_before_its_period() -> None:
    wakeup = asyncio.Event()
    ran = Flaky(failures=0)
    async with Runner({"woken": Job(ran.step, every=3600, wakeup=wakeup, gather=0.01)}):
        await asyncio.sleep(0.05)
        assert ran.calls == 0  # an hour's period: not yet
        wakeup.set()
        async with asyncio.timeout(5):
            await ran.done.wait()
    assert ran.calls == 1
    assert not wakeup.is_set()  # cleared before the run


async def test_a_processor_asks_to_run_again_without_a_wake_up() -> None:
    calls = 0
    again = asyncio.Event()

    async def step() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 2:
            again.set()
        return 0.01 if calls == 1 else None

    async with Runner({"retrying": Job(step, wakeup=asyncio.Event(), at_start=True)}):
        async with asyncio.timeout(5):
            await again.wait()
    assert calls == 2


async def test_stop_cancels_a_running_processor_and_waits_for_it() -> None:
    started = asyncio.Event()
    cleaned = asyncio.Event()

    async def step() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    runner = Runner({"long": Job(step, at_start=True)})
    async with runner:
        await started.wait()
    assert cleaned.is_set()  # the processor's own cleanup ran before stop returned


def test_processors_are_bound_to_the_parts_and_settings_can_turn_them_off(tmp_path: Path) -> None:
    from dicomweb_server.ingest.jobs import JOBS, StatisticsKeeper

    store = FileStore(tmp_path)
    keeper = StatisticsKeeper(None)
    on = bind(JOBS, Parts(Settings(storage=StorageSettings(gc_interval_seconds=60)), None, store, (keeper,)))
    assert set(on) == {"ingest.sweep", "index.statistics"}
    assert on["ingest.sweep"].every == 60
    off = bind(JOBS, Parts(Settings(storage=StorageSettings(gc_interval_seconds=0)), None, store, (keeper,)))
    assert set(off) == {"index.statistics"}
    with pytest.raises(LookupError):
        Parts(Settings(), None, store).get(StatisticsKeeper)
