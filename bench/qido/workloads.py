"""QIDO-RS scenario: query types, their expected counts, sequential latency measurement, workloads.

``qido-20k``: the population is loaded by STOW (2 requests in flight, one series per request) into
every storing target, then each query type runs ``iterations`` times after a warm-up, sequentially
over one keep-alive connection. ``qido-1m`` (ours only): the rows are COPYed straight into our
index (bench/qido_load.py), then the same query types run over HTTP and their SQL is EXPLAINed.

Every query string is plain ASCII with no percent-encoding (Orthanc does not decode it), and the
same strings go to every target. Ours must return exactly the count computed from the model.
"""

from __future__ import annotations

import datetime as dt
import gc
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.corpus.population import DAYS, FIRST_DAY, Population, QidoSpec, StowCorpus, fold, wildcard_regex
from bench.harness.sampling import ProcessSampler, wait_until_quiet
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, _post_all

ACCEPT = {"Accept": "application/dicom+json"}
NAME_PREFIXES = ["Doe", "Smi", "John", "Garc", "Mul", "Nguy", "Wil", "Mart", "And", "Tay", "Dvo", "Lee"]
NAME_INFIXES = ["oe", "mit", "arc", "ill", "son", "ue", "art", "ors", "ng", "vor"]
WINDOW_DAYS = 7
BUDGET_SECONDS = 6.0  # per query type: measured requests stop after this long ...
MIN_ITERATIONS = 10  # ... once at least this many were measured


@dataclass(frozen=True)
class Probe:
    path: str  # below the DICOMweb root, with the query string
    expected: int  # results ours must return
    total: int  # results that match, ignoring limit/offset (ours: Warning header when more remain)
    offset: int = 0


@dataclass(frozen=True)
class QueryType:
    key: str
    title: str
    example: str
    exact_key: bool
    probes: Callable[[Population, random.Random, int], list[Probe]]


# ---------------------------------------------------------------------------
# Query types. Each returns ``n`` probes with values drawn from the model by ``rng``.


def _page(total: int, limit: int, offset: int = 0) -> int:
    return max(0, min(limit, total - offset))


class Model:
    """Indexes over the population for computing expected counts."""

    def __init__(self, pop: Population) -> None:
        self.pop = pop
        self.by_patient: dict[str, int] = {}
        for s in pop.studies:
            self.by_patient[s.patient.patient_id] = self.by_patient.get(s.patient.patient_id, 0) + 1
        self.folded_names = [fold(s.patient.name) for s in pop.studies]
        self.dates = np.array([int(s.date) for s in pop.studies])
        self.ct_series = sum(1 for s in pop.studies for se in s.series if se.modality == "CT")
        self.mr_studies = sum(1 for s in pop.studies if "MR" in s.modalities)

    def name_matches(self, value: str) -> int:
        regex = wildcard_regex(value)
        return sum(1 for name in self.folded_names if regex.fullmatch(name))


_MODELS: dict[int, Model] = {}


def model(pop: Population) -> Model:
    if id(pop) not in _MODELS:
        _MODELS[id(pop)] = Model(pop)
    return _MODELS[id(pop)]


def _patient_id(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    m = model(pop)
    out = []
    for _ in range(n):
        pid = rng.choice(pop.studies).patient.patient_id
        out.append(Probe(f"/studies?PatientID={pid}", m.by_patient[pid], m.by_patient[pid]))
    return out


def _study_uid(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(f"/studies?StudyInstanceUID={rng.choice(pop.studies).uid}", 1, 1) for _ in range(n)]


def _accession(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(f"/studies?AccessionNumber={rng.choice(pop.studies).accession}", 1, 1) for _ in range(n)]


def _name_probes(values: list[str], template: str, limit: int) -> Callable[..., list[Probe]]:
    def probes(pop: Population, rng: random.Random, n: int) -> list[Probe]:
        m = model(pop)
        start = rng.randrange(len(values))
        out = []
        for k in range(n):
            value = template.format(values[(start + k) % len(values)])
            total = m.name_matches(value)
            out.append(Probe(f"/studies?PatientName={value}&limit={limit}", _page(total, limit), total))
        return out

    return probes


def _date_range(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    m = model(pop)
    out = []
    for _ in range(n):
        low = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS - WINDOW_DAYS))
        high = low + dt.timedelta(days=WINDOW_DAYS - 1)
        lo, hi = low.strftime("%Y%m%d"), high.strftime("%Y%m%d")
        total = int(((m.dates >= int(lo)) & (m.dates <= int(hi))).sum())
        out.append(Probe(f"/studies?StudyDate={lo}-{hi}&limit=100", _page(total, 100), total))
    return out


def _modalities(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = model(pop).mr_studies
    return [Probe("/studies?ModalitiesInStudy=MR&limit=25", _page(total, 25), total)] * n


def _includefield(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(p.path + "&includefield=all", p.expected, p.total) for p in _patient_id(pop, rng, n)]


def deep_offsets(total: int) -> tuple[int, int]:
    """Cold offsets: within 98 of each other, so a page of 100 never ends on another one."""
    lo = 501 if total >= 700 else max(1, total // 4) + 1
    return lo, lo + 98


def _deep_offset(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = len(pop.studies)
    lo, hi = deep_offsets(total)
    out = []
    for _ in range(n):
        offset = rng.randint(lo, hi)
        out.append(Probe(f"/studies?limit=100&offset={offset}", _page(total, 100, offset), total, offset))
    return out


def _walk(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    """Pages in order (offset 0, 100, 200, ...), starting over at the end of the list."""
    total = len(pop.studies)
    pages = max(1, -(-total // 100))
    out = []
    for k in range(n):
        offset = 100 * (k % pages)
        out.append(Probe(f"/studies?limit=100&offset={offset}", _page(total, 100, offset), total, offset))
    return out


def _study_series(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    out = []
    for _ in range(n):
        s = rng.choice(pop.studies)
        out.append(Probe(f"/studies/{s.uid}/series", len(s.series), len(s.series)))
    return out


def _study_instances(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    out = []
    for _ in range(n):
        s = rng.choice(pop.studies)
        out.append(Probe(f"/studies/{s.uid}/instances", s.instances, s.instances))
    return out


def _series_modality(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = model(pop).ct_series
    return [Probe("/series?Modality=CT&limit=50", _page(total, 50), total)] * n


QUERY_TYPES: tuple[QueryType, ...] = (
    QueryType("patient-id", "PatientID exact", "/studies?PatientID=MRN0000123", True, _patient_id),
    QueryType("study-uid", "StudyInstanceUID exact", "/studies?StudyInstanceUID={uid}", True, _study_uid),
    QueryType(
        "accession", "AccessionNumber exact", "/studies?AccessionNumber=ACC500000123", True, _accession
    ),
    QueryType(
        "name-prefix",
        "PatientName prefix",
        "/studies?PatientName=Doe*&limit=100",
        False,
        _name_probes(NAME_PREFIXES, "{}*", 100),
    ),
    QueryType(
        "name-infix",
        "PatientName infix",
        "/studies?PatientName=*oe*&limit=100",
        False,
        _name_probes(NAME_INFIXES, "*{}*", 100),
    ),
    QueryType(
        "date-range",
        "StudyDate range (7 days)",
        "/studies?StudyDate=20250301-20250307&limit=100",
        False,
        _date_range,
    ),
    QueryType(
        "modalities", "ModalitiesInStudy=MR", "/studies?ModalitiesInStudy=MR&limit=25", False, _modalities
    ),
    QueryType(
        "includefield-all",
        "includefield=all + PatientID",
        "/studies?PatientID=MRN0000123&includefield=all",
        False,
        _includefield,
    ),
    QueryType("deep-offset", "Deep offset, cold", "/studies?limit=100&offset=501..599", False, _deep_offset),
    QueryType("offset-walk", "Offset walk (keyset)", "/studies?limit=100&offset=0,100,200,...", False, _walk),
    QueryType("study-series", "Series of a study", "/studies/{uid}/series", False, _study_series),
    QueryType("study-instances", "Instances of a study", "/studies/{uid}/instances", False, _study_instances),
    QueryType(
        "series-modality", "Series by Modality", "/series?Modality=CT&limit=50", False, _series_modality
    ),
)
QUERY_KEYS = tuple(q.key for q in QUERY_TYPES)


def plan_probes(pop: Population, warmup: int, iterations: int) -> dict[str, tuple[list[Probe], list[Probe]]]:
    """(warm-up, measured) probes per query type; the same for every target (seeded by the type)."""
    out = {}
    for q in QUERY_TYPES:
        rng = random.Random(f"{pop.spec.seed}/{q.key}")
        if q.key == "offset-walk":  # warm-up walks the first pages; the measured walk starts over at 0
            out[q.key] = (_walk(pop, rng, warmup), _walk(pop, rng, iterations))
        else:
            probes = q.probes(pop, rng, warmup + iterations)
            out[q.key] = (probes[:warmup], probes[warmup:])
    return out


# ---------------------------------------------------------------------------
# Measurement


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
        return await _run_queries(client, endpoint, probes, check_warning, budget)
    finally:
        gc.enable()


async def _run_queries(
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


# ---------------------------------------------------------------------------
# Options (set by bench.run) and the workloads


@dataclass
class QidoOptions:
    small: QidoSpec
    big: QidoSpec
    warmup: int
    iterations: int
    cache_dir: Path
    plans_out: Path
    corpus: StowCorpus | None = None  # the small scenario's STOW bodies, loaded once by bench.run


def small_spec(quick: bool, studies: int | None = None) -> QidoSpec:
    return QidoSpec("qido20k", studies or (80 if quick else 800), seed=20250)


def big_spec(quick: bool, studies: int | None = None) -> QidoSpec:
    return QidoSpec("qido1m", studies or (2000 if quick else 40_000), series_per_study=4, seed=20251)


def _quiet(endpoint: Endpoint) -> float:
    """After a load: let the target finish its background work (autovacuum, Orthanc's jobs)."""
    return wait_until_quiet(0.10, 30.0, endpoint.target)


def _dump(opts: QidoOptions, target: str, workload: str, queries: dict[str, QueryStats]) -> None:
    """Every measured request (path, ms, results) in the cache directory, for a closer look."""
    path = opts.cache_dir / "qido-latencies" / f"{workload}-{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {
        key: [
            {"path": p, "ms": round(ms * 1000, 3), "results": n, "expected": e}
            for p, ms, n, e in zip(s.paths, s.latencies, s.counts, s.expected, strict=True)
        ]
        for key, s in queries.items()
    }
    path.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


def _all_errors(queries: dict[str, QueryStats]) -> list[str]:
    return [f"{s.key}: {e}" for s in queries.values() for e in s.errors]


def _count_warnings(queries: dict[str, QueryStats], ours: bool) -> list[str]:
    out = []
    for s in queries.values():
        if s.mismatches:
            path, got, want = s.mismatches[0]
            out.append(
                f"{s.key}: {len(s.mismatches)}/{len(s.counts)} results counts differ from the model "
                f"(e.g. {path}: {got}, model {want})"
            )
        if ours and s.warning_problems:
            out.append(f"{s.key}: {s.warning_problems[0]}")
    return out


async def run_small(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    opts: QidoOptions = ctx.qido
    corpus = opts.corpus
    assert corpus is not None
    pop = corpus.population
    print(
        f"[{endpoint.target}] qido-20k: loading {pop.instance_count} instances "
        f"({len(corpus.bodies)} STOW requests) ...",
        flush=True,
    )
    posted = await _post_all(endpoint, corpus.bodies, ctx.concurrency)
    load = LoadStats(f"STOW, {ctx.concurrency} requests in flight", pop.instance_count, posted.elapsed)
    print(f"[{endpoint.target}] qido-20k: loaded in {posted.elapsed:.1f} s ({load.inst_per_s:.0f} inst/s)")
    load.notes.append(f"then waited {_quiet(endpoint):.0f} s for a quiet machine")
    probes = plan_probes(pop, opts.warmup, opts.iterations)
    ours = endpoint.target == "ours"
    if ours:  # black-box measurement, but say whether autovacuum had analyzed the tables yet
        from bench.qido import load as qido_load

        dsn = qido_load.ours_dsn(endpoint.workdir)
        load.notes.append(f"index before the queries: {await qido_load.table_state(dsn)}")
    aux = endpoint.aux_roots()
    async with query_client(endpoint) as qclient:
        with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
            t0 = time.perf_counter()
            queries = await run_queries(qclient, endpoint, probes, check_warning=ours)
            elapsed = time.perf_counter() - t0
        detail = QidoDetail(
            "20k", pop.spec, len(pop.studies), pop.series_count, pop.instance_count, load, queries
        )
        _dump(opts, endpoint.target, "qido-20k", queries)
        if ours:  # plans as measured, then a diagnostic second pass as if autovacuum had run
            print("[ours] qido-20k: EXPLAIN (ANALYZE, BUFFERS) of each query type ...", flush=True)
            detail.plans, detail.plan_doc = await qido_load.explain_all(
                dsn,
                probes,
                detail,
                "Right after the STOW load, as the queries were measured (before the VACUUM ANALYZE of the "
                "diagnostic second pass): "
                + (
                    "autovacuum had not analyzed the tables yet, so the planner has no statistics"
                    if "never analyzed" in load.notes[-1]
                    else "autovacuum had analyzed the tables"
                )
                + f" ({load.notes[-1].removeprefix('index before the queries: ')}).",
            )
            took = await qido_load.vacuum_analyze(dsn)
            print(f"[ours] qido-20k: VACUUM ANALYZE ({took:.1f} s), then the same queries again", flush=True)
            detail.settled = await run_queries(qclient, endpoint, probes, check_warning=True)
            _dump(opts, endpoint.target, "qido-20k-vacuumed", detail.settled)
    latencies = [x for s in queries.values() for x in s.latencies]
    return Result(
        workload="qido-20k",
        requests=len(latencies),
        instances=pop.instance_count,
        payload_bytes=corpus.payload_bytes,
        elapsed=posted.elapsed,
        latencies=latencies,
        proc=sampler.stats(),
        sent_instances=pop.instance_count,
        errors=[f"load: {e}" for e in posted.errors[:5]] + _all_errors(queries),
        warnings=_count_warnings(queries, endpoint.target == "ours") + posted.warnings[:3],
        extra=detail,
        query_seconds=elapsed,
    )


async def run_big(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    from bench.qido import load as qido_load

    opts: QidoOptions = ctx.qido
    pop = Population(opts.big)
    print(
        f"[{endpoint.target}] qido-1m: COPYing {pop.instance_count} instances, {pop.series_count} series, "
        f"{len(pop.studies)} studies into the index ...",
        flush=True,
    )
    dsn = qido_load.ours_dsn(endpoint.workdir)
    load = await qido_load.bulk_load(dsn, pop)
    print(
        f"[{endpoint.target}] qido-1m: loaded in {load.seconds:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in load.steps.items())
        + ")",
        flush=True,
    )
    _quiet(endpoint)
    probes = plan_probes(pop, opts.warmup, opts.iterations)
    aux = endpoint.aux_roots()
    async with query_client(endpoint) as qclient:
        with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
            t0 = time.perf_counter()
            queries = await run_queries(qclient, endpoint, probes, check_warning=True)
            elapsed = time.perf_counter() - t0
    detail = QidoDetail("1M", pop.spec, len(pop.studies), pop.series_count, pop.instance_count, load, queries)
    _dump(opts, endpoint.target, "qido-1m", queries)
    print(f"[{endpoint.target}] qido-1m: EXPLAIN (ANALYZE, BUFFERS) of each query type ...", flush=True)
    detail.plans, detail.plan_doc = await qido_load.explain_all(
        dsn, probes, detail, "Rows COPYed into the index, then VACUUM ANALYZE and CHECKPOINT."
    )
    detail.plans_path = str(opts.plans_out)
    latencies = [x for s in queries.values() for x in s.latencies]
    return Result(
        workload="qido-1m",
        requests=len(latencies),
        instances=pop.instance_count,
        payload_bytes=0,
        elapsed=load.seconds,
        latencies=latencies,
        proc=sampler.stats(),
        sent_instances=0,
        errors=_all_errors(queries),
        warnings=_count_warnings(queries, True),
        extra=detail,
        query_seconds=elapsed,
    )


def details(result: Result | None) -> QidoDetail | None:
    extra: Any = result.extra if result is not None else None
    return extra if isinstance(extra, QidoDetail) else None
