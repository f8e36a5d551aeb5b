"""QIDO-RS scenario: query types, their expected counts, sequential latency measurement, workloads.

``qido-20k``: the population is loaded by STOW (2 requests in flight, one series per request) into
every storing target, then each query type runs ``iterations`` times after a warm-up, sequentially
over one keep-alive connection. ``qido-1m`` (ours only): the rows are COPYed straight into our
index (bench/qido/index.py), then the same query types run over HTTP and their SQL is EXPLAINed.

Every query string is plain ASCII with no percent-encoding (Orthanc does not decode it), and the
same strings go to every target. Ours must return exactly the count computed from the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.corpus.population import Population, QidoSpec, StowCorpus
from bench.harness.sampling import ProcessSampler, wait_until_quiet
from bench.harness.stow_client import post_all
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, Workload
from bench.qido import explain, index
from bench.qido.measure import LoadStats, QidoDetail, QueryStats, query_client, run_queries
from bench.qido.queries import plan_probes


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
    posted = await post_all(endpoint, corpus.bodies, ctx.concurrency)
    load = LoadStats(f"STOW, {ctx.concurrency} requests in flight", pop.instance_count, posted.elapsed)
    print(f"[{endpoint.target}] qido-20k: loaded in {posted.elapsed:.1f} s ({load.inst_per_s:.0f} inst/s)")
    load.notes.append(f"then waited {_quiet(endpoint):.0f} s for a quiet machine")
    probes = plan_probes(pop, opts.warmup, opts.iterations)
    ours = endpoint.target == "ours"
    if ours:  # black-box measurement, but say whether autovacuum had analyzed the tables yet
        dsn = index.ours_dsn(endpoint.workdir)
        load.notes.append(f"index before the queries: {await index.table_state(dsn)}")
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
            detail.plans, detail.plan_doc = await explain.explain_all(
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
            took = await index.vacuum_analyze(dsn)
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
    opts: QidoOptions = ctx.qido
    pop = Population(opts.big)
    print(
        f"[{endpoint.target}] qido-1m: COPYing {pop.instance_count} instances, {pop.series_count} series, "
        f"{len(pop.studies)} studies into the index ...",
        flush=True,
    )
    dsn = index.ours_dsn(endpoint.workdir)
    load = await index.bulk_load(dsn, pop)
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
    detail.plans, detail.plan_doc = await explain.explain_all(
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


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "qido-20k",
        "QIDO-RS searches, 20k instances loaded by STOW",
        run_small,
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        session="qido-20k",
    ),
    Workload(
        "qido-1m",
        "QIDO-RS searches, 1M instances COPYed into the index",
        run_big,
        frozenset({"ours"}),
        session="qido-1m",
    ),
)
