"""WADO-RS retrieve scenario: whole-study retrieve, study metadata, single frames, a 2 GiB study.

Session ``retrieve`` (ours, Orthanc SQLite and PostgreSQL): the first retrieve workload to run on a
fresh target stores the retrieve corpus (bench/wado_corpus.py) by STOW, then

- ``wado-study``: ``GET /studies/{study}`` as ``multipart/related; type="application/dicom";
  transfer-syntax=*``, ``concurrency`` clients at a time; bodies are streamed and counted (bytes and
  parts), never kept;
- ``wado-metadata``: ``GET /studies/{study}/metadata`` of the 100-instance study, sequential over one
  keep-alive connection;
- ``wado-frames``: ``GET .../frames/{n}`` as ``multipart/related; type="application/octet-stream";
  transfer-syntax=*`` of the CT instance (frame 1) and of a middle frame of each multi-frame instance,
  sequential.

Session ``retrieve-big`` (ours, Orthanc SQLite): ``wado-big`` stores a ~2 GiB study of 128 MiB
instances, then retrieves it whole with a client that reads at most ``big_rate`` MB/s, sampling the
server's RSS.

Measured requests use the lean client in bench/rawhttp.py (httpx costs the shared CPUs too much);
the loads and the untimed Accept probes use httpx.

Orthanc answers some Accept headers with 400/406: every target first gets the Accept the scenario
names; when that fails, the status and message are recorded and the fallback Accept (same media type
without ``transfer-syntax``) is measured instead, and the report says so.
"""

from __future__ import annotations

import asyncio
import gc
import time

import httpx
import orjson

from bench.corpus.retrieve import FrameInstance
from bench.harness import rawhttp
from bench.harness.sampling import ProcessSampler, settle
from bench.harness.stow_client import STOW_HEADERS, check_response
from bench.harness.target import Endpoint
from bench.harness.workload import Context, Result, Workload
from bench.wado.measure import (
    FRAME_ACCEPT,
    FRAME_FALLBACK,
    METADATA_ACCEPT,
    REFUSED,
    STUDY_ACCEPT,
    STUDY_FALLBACK,
    LoadInfo,
    Measure,
    PartCounter,
    WadoDetail,
    boundary_of,
    budget_left,
    choose_accept,
    first_part,
    probe_accepts,
    record,
    squeeze,
)
from bench.wado.runner import Check, WadoOptions, ensure_loaded, idle, quiet, result, sequential

# ---------------------------------------------------------------------------
# Whole-study retrieve


async def _stream_one(
    conn: rawhttp.Connection, url: str, accept: str, measure: Measure, rate: float = 0.0
) -> rawhttp.Answer | None:
    """GET ``url``, streamed and counted (bytes, multipart parts), or None on failure."""
    counters: list[PartCounter] = []

    def count(answer: rawhttp.Answer, block: bytes) -> None:
        if not counters:
            counters.append(PartCounter(boundary_of(answer.content_type) or b"(no boundary)"))
        counters[0].feed(block)

    try:
        answer = await conn.get(url, {"Accept": accept}, on_chunk=count, rate=rate * 1e6)
    except rawhttp.HttpError as exc:
        measure.errors.append(str(exc))
        return None
    measure.statuses[answer.status] += 1
    if answer.status != 200:
        measure.errors.append(f"HTTP {answer.status}: {squeeze(answer.text)}")
        return None
    measure.content_type = measure.content_type or answer.content_type
    parts = counters[0].parts if counters else 0
    if measure.expected_parts and parts != measure.expected_parts:
        measure.errors.append(f"{parts} parts in the response, {measure.expected_parts} expected")
    return answer


async def run_study(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    opts: WadoOptions = ctx.wado
    assert opts.corpus is not None
    load = await ensure_loaded(client, endpoint, ctx)
    series = opts.corpus.study_series
    path = f"/studies/{series.study_uid}"
    measure = Measure(
        "study",
        f"Whole study, {len(series.instances)} x 0.5 MB CT",
        path,
        expected_parts=len(series.instances),
    )
    url = endpoint.dicomweb_root + path
    detail = WadoDetail("wado-study", {"study": measure}, load)
    accept = await choose_accept(client, url, [STUDY_ACCEPT, STUDY_FALLBACK], measure)
    if accept is None:
        return result("wado-study", detail, 0, 0.0, [], idle(endpoint))
    measure.accept = accept

    async def clients(requests: int, record: bool) -> None:
        queue = list(range(requests))
        started = time.perf_counter()

        async def worker() -> None:
            async with rawhttp.Connection(endpoint.base_url, headers=endpoint.headers) as conn:
                while queue and (not record or budget_left(started, len(measure.latencies))):
                    queue.pop()
                    answer = await _stream_one(conn, url, accept, measure)
                    if answer is not None and record:
                        record(measure, answer, measure.expected_parts)
            if record:
                measure.capped = len(queue)

        await asyncio.gather(*(worker() for _ in range(ctx.concurrency)))

    await clients(opts.warmup * ctx.concurrency, record=False)
    measure.errors.clear()  # warm-up problems show again in the measured requests
    measure.statuses.clear()
    settle()
    aux = endpoint.aux_roots()
    with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
        t0 = time.perf_counter()
        await clients(opts.study_requests, record=True)
        measure.elapsed = time.perf_counter() - t0
    measure.proc = sampler.stats()
    return result(
        "wado-study", detail, len(measure.latencies), measure.elapsed, measure.latencies, measure.proc
    )


async def run_metadata(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    opts: WadoOptions = ctx.wado
    assert opts.corpus is not None
    load = await ensure_loaded(client, endpoint, ctx)
    series = opts.corpus.meta_series
    count = len(series.instances)
    path = f"/studies/{series.study_uid}/metadata"
    measure = Measure("metadata", f"Study metadata, {count} instances", path, METADATA_ACCEPT)
    measure.expected_parts = count
    detail = WadoDetail("wado-metadata", {"metadata": measure}, load)

    def check(answer: rawhttp.Answer) -> tuple[int, str | None]:
        measure.content_type = measure.content_type or answer.content_type
        try:
            items = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return 0, f"not JSON: {answer.text[:100]}"
        n = len(items) if isinstance(items, list) else 0
        return n, None if n == count else f"{n} instances in the metadata, {count} expected"

    settle()
    aux = endpoint.aux_roots()
    gc.collect()
    gc.disable()  # the client's own collector pauses must not count against a server
    try:
        async with rawhttp.Connection(endpoint.base_url, headers=endpoint.headers) as conn:
            with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
                await sequential(
                    conn,
                    endpoint.dicomweb_root + path,
                    METADATA_ACCEPT,
                    measure,
                    opts.warmup,
                    opts.metadata_requests,
                    check,
                )
    finally:
        gc.enable()
    measure.proc = sampler.stats()
    return result(
        "wado-metadata", detail, len(measure.latencies), measure.elapsed, measure.latencies, measure.proc
    )


def _frame_check(frame: FrameInstance, measure: Measure) -> Check:
    def check(answer: rawhttp.Answer) -> tuple[int, str | None]:
        content_type = answer.content_type
        boundary = boundary_of(content_type)
        if boundary is None:
            return 0, f"not multipart: {content_type}"
        part_type, size, parts = first_part(bytes(answer.body), boundary)
        if not measure.content_type:
            measure.content_type, measure.part_type, measure.part_bytes = content_type, part_type, size
        if parts != 1:
            return parts, f"{parts} parts, 1 expected"
        if size not in (frame.native_frame_bytes, frame.stored_frame_bytes):
            return parts, (
                f"frame of {size} bytes: neither decoded ({frame.native_frame_bytes}) nor as stored "
                f"({frame.stored_frame_bytes})"
            )
        return parts, None

    return check


def frame_form(measure: Measure) -> str:
    """What came back: the decoded frame or the stored (compressed) bytes."""
    if not measure.part_bytes:
        return "-"
    if measure.part_bytes == measure.native_bytes:
        form = "decoded" if measure.native_bytes != measure.stored_bytes else "native"
    elif measure.part_bytes == measure.stored_bytes:
        form = "as stored"
    else:
        form = "unexpected size"
    return f"{form}, {measure.part_bytes} B"


async def run_frames(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    opts: WadoOptions = ctx.wado
    corpus = opts.corpus
    assert corpus is not None
    load = await ensure_loaded(client, endpoint, ctx)
    detail = WadoDetail("wado-frames", {}, load, missing=corpus.missing)
    settle()
    aux = endpoint.aux_roots()
    gc.collect()
    gc.disable()
    try:
        async with rawhttp.Connection(endpoint.base_url, headers=endpoint.headers) as conn:
            with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
                for frame in corpus.frames:
                    measure = Measure(frame.key, frame.title, frame.path())
                    measure.native_bytes, measure.stored_bytes = (
                        frame.native_frame_bytes,
                        frame.stored_frame_bytes,
                    )
                    detail.measures[frame.key] = measure
                    url = endpoint.dicomweb_root + frame.path()
                    accept = await choose_accept(client, url, [FRAME_ACCEPT, FRAME_FALLBACK], measure)
                    if accept is None:
                        continue
                    measure.accept = accept
                    await sequential(
                        conn,
                        url,
                        accept,
                        measure,
                        opts.warmup,
                        opts.frame_requests,
                        _frame_check(frame, measure),
                    )
    finally:
        gc.enable()
    proc = sampler.stats()
    for m in detail.measures.values():
        m.proc = proc
    detail.probes = await probe_accepts(client, endpoint, corpus)
    latencies = [x for m in detail.measures.values() for x in m.latencies]
    return result("wado-frames", detail, len(latencies), proc.wall, latencies, proc)


# ---------------------------------------------------------------------------
# The big study: stored, then retrieved by a slow client


async def run_big(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> Result:
    opts: WadoOptions = ctx.wado
    big = opts.big
    print(
        f"[{endpoint.target}] wado-big: storing {big.count} instances of 128 MiB "
        f"({big.nbytes / 2**30:.2f} GiB), one per request ...",
        flush=True,
    )
    t0 = time.perf_counter()
    errors: list[str] = []
    queue = list(range(big.count))

    async def store() -> None:
        while queue:
            index = queue.pop(0)
            length = big.request_length(index)
            headers = {**STOW_HEADERS, "Content-Length": str(length)}  # not chunked: Orthanc wants a length
            try:
                response = await client.post(endpoint.stow_url, content=big.body(index), headers=headers)
            except httpx.HTTPError as exc:
                errors.append(f"store {index}: {type(exc).__name__}: {exc}")
                continue
            error, _warning = check_response(
                endpoint, response.status_code, response.content, response.headers, 1, length
            )
            if error:
                errors.append(f"store {index}: {error}")

    await asyncio.gather(*(store() for _ in range(ctx.concurrency)))
    load = LoadInfo(big.count, big.nbytes, time.perf_counter() - t0, [f"load: {e}" for e in errors], [])
    print(f"[{endpoint.target}] wado-big: stored in {load.seconds:.1f} s", flush=True)
    path = f"/studies/{big.study_uid}"
    measure = Measure("big", f"Whole study, {big.count} x 128 MiB", path, expected_parts=big.count)
    detail = WadoDetail("wado-big", {"big": measure}, load)
    detail.notes.append(
        f"client reads at most {opts.big_rate:g} MB/s" if opts.big_rate else "client unthrottled"
    )
    quiet(endpoint, opts)
    settle(1.0)
    url = endpoint.dicomweb_root + path
    aux = endpoint.aux_roots()
    async with rawhttp.Connection(endpoint.base_url, headers=endpoint.headers) as conn:
        with ProcessSampler(lambda: [endpoint.app_pid], lambda: aux) as sampler:
            accept = STUDY_ACCEPT
            answer = await _stream_one(conn, url, accept, measure, rate=opts.big_rate)
            if answer is None and any(code in REFUSED for code in measure.statuses):
                measure.quirks.append(f"Accept {accept!r} → {measure.errors[-1]}")
                measure.errors.clear()
                accept = STUDY_FALLBACK
                measure.quirks.append(f"measured with the fallback Accept {accept!r}")
                answer = await _stream_one(conn, url, accept, measure, rate=opts.big_rate)
    measure.accept = accept
    measure.proc = sampler.stats()
    if answer is not None:
        record(measure, answer, big.count)
        measure.elapsed = answer.elapsed
    return result(
        "wado-big", detail, len(measure.latencies), measure.elapsed, measure.latencies, measure.proc
    )


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "wado-study",
        "WADO-RS whole-study retrieve",
        run_study,
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        session="retrieve",
    ),
    Workload(
        "wado-metadata",
        "WADO-RS study metadata",
        run_metadata,
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        session="retrieve",
    ),
    Workload(
        "wado-frames",
        "WADO-RS single frames",
        run_frames,
        frozenset({"ours", "orthanc-sqlite", "orthanc-postgresql"}),
        session="retrieve",
    ),
    Workload(
        "wado-big",
        "WADO-RS 2 GiB study to a slow client",
        run_big,
        frozenset({"ours", "orthanc-sqlite"}),
        session="retrieve-big",
    ),
)
