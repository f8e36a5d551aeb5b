"""Resident-set-size sampling of a server's process tree (plus its auxiliary processes)."""

from __future__ import annotations

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


def rss_of(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class RssStats:
    """Bytes. ``app`` is the launched server's own tree; ``aux`` its side processes (databases, stores)."""

    app_baseline: int
    app_peak: int
    aux_baseline: int
    aux_peak: int
    samples: int

    @property
    def app_growth(self) -> int:
        return max(0, self.app_peak - self.app_baseline)

    @property
    def aux_growth(self) -> int:
        return max(0, self.aux_peak - self.aux_baseline)

    @property
    def total_peak(self) -> int:
        return self.app_peak + self.aux_peak


class RssSampler:
    """Samples every ``interval`` seconds in a thread; the baseline is the first sample (taken at start)."""

    def __init__(
        self, app_roots: Callable[[], list[int]], aux_roots: Callable[[], list[int]], interval: float = 0.05
    ) -> None:
        self._app_roots, self._aux_roots, self._interval = app_roots, aux_roots, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._app: list[int] = []
        self._aux: list[int] = []

    def sample(self) -> tuple[int, int]:
        app = tree_pids(self._app_roots())
        aux = tree_pids(self._aux_roots()) - app
        return rss_of(app), rss_of(aux)

    def _record(self) -> None:
        app, aux = self.sample()
        self._app.append(app)
        self._aux.append(aux)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._record()

    def __enter__(self) -> RssSampler:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record()

    def stats(self) -> RssStats:
        return RssStats(
            app_baseline=self._app[0],
            app_peak=max(self._app),
            aux_baseline=self._aux[0],
            aux_peak=max(self._aux),
            samples=len(self._app),
        )


def settle(seconds: float = 0.5) -> None:
    """Give a server a moment to return to idle before a baseline is taken."""
    time.sleep(seconds)
