"""Sampling a server's process tree during a workload: RSS (peak, growth) and CPU time.

CPU accounting also tells how much of the machine something *outside* the benchmark used during the
measurement (``foreign_cpu``), so a figure disturbed by other work on the box can be spotted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


def tree_pids(roots: Iterable[int]) -> set[int]:
    """``roots`` and all their live descendants."""
    pids: set[int] = set()
    for pid in roots:
        try:
            proc = psutil.Process(pid)
            pids.add(pid)
            pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return pids


def _busy_seconds() -> float:
    """CPU time charged to processes machine-wide (irq/softirq, e.g. loopback TCP, are left out)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class ProcStats:
    """RSS in bytes; ``app`` is the launched server's tree, ``aux`` its side processes (database, store)."""

    app_baseline: int
    app_peak: int
    aux_baseline: int
    aux_peak: int
    app_cpu: float  # CPU seconds used by the server tree during the window
    aux_cpu: float
    client_cpu: float  # the harness process itself (client + sampler)
    foreign_cpu: float  # fraction of all CPUs used by anything else during the window
    wall: float
    samples: int

    @property
    def app_growth(self) -> int:
        return max(0, self.app_peak - self.app_baseline)

    @property
    def aux_growth(self) -> int:
        return max(0, self.aux_peak - self.aux_baseline)


class _Group:
    """RSS and CPU of a changing set of processes; CPU of processes born mid-window counts from zero."""

    def __init__(self) -> None:
        self.rss: list[int] = []
        self.first_cpu: dict[tuple[int, float], float] = {}
        self.last_cpu: dict[tuple[int, float], float] = {}

    def record(self, pids: Iterable[int], initial: bool) -> None:
        total = 0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    key, rss, cpu = (pid, proc.create_time()), proc.memory_info().rss, proc.cpu_times()
            except psutil.Error:
                continue
            total += rss
            seconds = cpu.user + cpu.system
            self.first_cpu.setdefault(key, seconds if initial else 0.0)
            self.last_cpu[key] = seconds
        self.rss.append(total)

    def cpu(self) -> float:
        return sum(self.last_cpu[k] - self.first_cpu[k] for k in self.last_cpu)


class ProcessSampler:
    """Samples every ``interval`` s in a thread; the baseline is the first sample, taken on entry."""

    def __init__(
        self, app_roots: Callable[[], list[int]], aux_roots: Callable[[], list[int]], interval: float = 0.05
    ) -> None:
        self._app_roots, self._aux_roots, self._interval = app_roots, aux_roots, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
        self._app, self._aux = _Group(), _Group()
        self._t0 = self._busy0 = self._own0 = 0.0
        self._wall = self._busy = self._own = 0.0

    def _record(self, initial: bool = False) -> None:
        app = tree_pids(self._app_roots())
        self._app.record(app, initial)
        self._aux.record(tree_pids(self._aux_roots()) - app, initial)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._record()

    def __enter__(self) -> ProcessSampler:
        self._record(initial=True)
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_seconds(), _own_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record()
        self._wall = time.perf_counter() - self._t0
        self._busy, self._own = _busy_seconds() - self._busy0, _own_cpu() - self._own0

    def stats(self) -> ProcStats:
        app_cpu, aux_cpu = self._app.cpu(), self._aux.cpu()
        foreign = max(0.0, self._busy - app_cpu - aux_cpu - self._own)
        return ProcStats(
            app_baseline=self._app.rss[0],
            app_peak=max(self._app.rss),
            aux_baseline=self._aux.rss[0],
            aux_peak=max(self._aux.rss),
            app_cpu=app_cpu,
            aux_cpu=aux_cpu,
            client_cpu=self._own,
            foreign_cpu=foreign / (self._wall * (os.cpu_count() or 1)) if self._wall else 0.0,
            wall=self._wall,
            samples=len(self._app.rss),
        )


def machine_busy(window: float = 1.0) -> float:
    """Share of all CPUs busy over ``window`` seconds (the harness itself should be idle meanwhile)."""
    busy0, t0 = _busy_seconds(), time.perf_counter()
    time.sleep(window)
    return (_busy_seconds() - busy0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def wait_until_quiet(limit: float, timeout: float, label: str) -> float:
    """Wait up to ``timeout`` s for machine-wide CPU use to drop below ``limit``; returns seconds waited."""
    start = last_note = time.monotonic()
    while (busy := machine_busy()) > limit:
        now = time.monotonic()
        if now - start >= timeout:
            print(
                f"[{label}] machine still {busy:.0%} busy after {timeout:.0f}s; measuring anyway", flush=True
            )
            break
        if now - last_note >= 10 or now - start < 1.5:
            print(f"[{label}] machine {busy:.0%} busy (other work); waiting for it to quieten", flush=True)
            last_note = now
    return time.monotonic() - start


def settle(seconds: float = 0.5) -> None:
    """Give a server a moment to return to idle before a baseline is taken."""
    time.sleep(seconds)
