"""Workloads: each one runs against a started target and returns a Result.

To add a scenario write an async function with the ``WorkloadFn`` signature and add a ``Workload``
to its suite's ``WORKLOADS`` (a goal on it goes in the suite's ``GOALS``; the suite itself is one
entry of the registry in ``bench/run.py``). Workloads of one ``session`` run in registry order on one
fresh server per target, so a retrieve workload can use what ``stow-ct512`` stored (``ctx.corpora``
holds every UID); a workload that needs an index of its own (the QIDO ones) gets its own session.
Build URLs from ``endpoint.dicomweb_root``, and wrap the measured part in ``ProcessSampler`` as the
STOW workloads (bench/stow/workloads.py) do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bench.corpus.ct import Corpus
from bench.corpus.multipart import build_body
from bench.harness.sampling import ProcStats
from bench.harness.target import Endpoint


@dataclass
class Context:
    corpora: dict[str, Corpus]
    concurrency: int = 2
    big_gib: float = 2.0
    qido: Any = None  # bench.qido.workloads.QidoOptions when a QIDO workload is selected
    wado: Any = None  # bench.wado.workloads.WadoOptions when a retrieve workload is selected
    orders: Any = None  # bench.orders.workloads.Sizes (full or --quick)
    _bodies: dict[str, tuple[list[bytes], list[bytes]]] = field(default_factory=dict)

    def bodies(self, corpus: str) -> tuple[list[bytes], list[bytes]]:
        """(warm-up, measured) request bodies, one per series, built once and reused for every target."""
        if corpus not in self._bodies:
            c = self.corpora[corpus]
            self._bodies[corpus] = (
                [build_body(s.instances) for s in c.warmup],
                [build_body(s.instances) for s in c.measured],
            )
        return self._bodies[corpus]


@dataclass
class Result:
    workload: str
    requests: int
    instances: int
    payload_bytes: int  # DICOM bytes in the measured requests (multipart framing excluded)
    elapsed: float
    latencies: list[float]
    proc: ProcStats
    sent_instances: int  # everything sent to the target, warm-up included (for the stored-count check)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. HTTP 202 although every instance was stored
    extra: Any = None  # workload-specific detail (bench.qido.QidoDetail)
    query_seconds: float = 0.0  # QIDO: wall time of the measured queries

    @property
    def cpu_ms_per_instance(self) -> float:
        return (self.proc.app_cpu + self.proc.aux_cpu) * 1000 / self.instances if self.instances else 0.0

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.elapsed if self.elapsed else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / 1e6 / self.elapsed if self.elapsed else 0.0

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


WorkloadFn = Callable[[httpx.AsyncClient, Endpoint, Context], Awaitable[Result]]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    run: WorkloadFn
    applies_to: frozenset[str] | None = None  # None: every target
    session: str = "stow"  # workloads of one session share one fresh server per target

    def applies(self, target: str) -> bool:
        if self.applies_to is None:  # every target except those that exist for one workload only
            return target not in NAMED_ONLY
        return target in self.applies_to


# Variants of ours that run only the workloads naming them (the access A/B).
NAMED_ONLY = frozenset({"ours-redis", "ours-noauth"})
