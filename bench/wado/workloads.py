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
import contextlib
import gc
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.corpus.multipart import build_body
from bench.corpus.retrieve import BigStudy, FrameInstance, RetrieveCorpus, big_study
from bench.harness import rawhttp
from bench.harness.sampling import ProcessSampler, ProcStats, settle, wait_until_quiet
from bench.harness.target import Endpoint
from bench.harness.workload import STOW_HEADERS, Context, Result, _post_all, check_response

STUDY_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_FALLBACK = 'multipart/related; type="application/dicom"'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAME_FALLBACK = 'multipart/related; type="application/octet-stream"'
METADATA_ACCEPT = "application/dicom+json"
REFUSED = (400, 406, 415)  # an Accept header refused: the fallback is tried
BUDGET_SECONDS = 15.0  # measured requests of one kind stop after this long ...
MIN_REQUESTS = 10  # ... once at least this many were measured


@dataclass
class WadoOptions:
    retrieve_instances: int  # instances in the whole-study retrieve study
    study_requests: int  # measured whole-study retrieves (all clients together)
    metadata_requests: int
    frame_requests: int  # per frame kind
    warmup: int  # warm-up requests per kind (whole-study: per client)
    big: BigStudy
    big_rate: float  # MB/s the slow client reads at (0: as fast as it can)
    cache_dir: Path
    quiet_wait: float = 20.0  # after a load: wait up to this long for the machine to quieten
    corpus: RetrieveCorpus | None = None
    loaded: dict[tuple[str, int], LoadInfo] = field(default_factory=dict)  # (target, pid) -> load


def options(
    quick: bool, cache_dir: Path, big_gib: float | None, big_rate: float, quiet_wait: float
) -> WadoOptions:
    return WadoOptions(
        retrieve_instances=150,
        study_requests=6 if quick else 24,
        metadata_requests=40 if quick else 200,
        frame_requests=40 if quick else 200,
        warmup=2 if quick else 5,
        big=big_study(big_gib if big_gib is not None else (0.25 if quick else 2.0)),
        big_rate=big_rate,
        cache_dir=cache_dir,
        quiet_wait=min(quiet_wait, 30.0),
    )


@dataclass
class LoadInfo:
    instances: int
    payload_bytes: int
    seconds: float
    errors: list[str]
    warnings: list[str]


@dataclass
class Measure:
    """One kind of request against one target."""

    key: str
    title: str
    path: str  # below the DICOMweb root (an example for the frames)
    accept: str = ""  # the Accept measured
    latencies: list[float] = field(default_factory=list)
    first_byte: list[float] = field(default_factory=list)
    body_bytes: int = 0
    parts: list[int] = field(default_factory=list)  # parts (or JSON items) per response
    elapsed: float = 0.0  # wall time of the measured requests
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    quirks: list[str] = field(default_factory=list)  # Accept headers refused, odd answers
    content_type: str = ""  # of the first good response
    part_type: str = ""  # of its first part (frames)
    part_bytes: int = 0  # size of its first part (frames)
    native_bytes: int = 0  # frames: the frame's size decoded ...
    stored_bytes: int = 0  # ... and as stored (the compressed fragment)
    expected_parts: int = 0
    capped: int = 0  # measured requests left out by the time budget
    proc: ProcStats | None = None

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.body_bytes / 1e6 / self.elapsed if self.elapsed else float("nan")

    @property
    def ok(self) -> bool:
        return bool(self.latencies) and not self.errors


@dataclass
class WadoDetail:
    workload: str
    measures: dict[str, Measure]
    load: LoadInfo | None = None  # set on the workload that stored the corpus
    notes: list[str] = field(default_factory=list)
    missing: tuple[str, ...] = ()  # frame encodings that could not be generated
    probes: dict[str, str] = field(default_factory=dict)  # Accept probe label -> what came back


def details(result: Result | None) -> WadoDetail | None:
    extra: Any = result.extra if result is not None else None
    return extra if isinstance(extra, WadoDetail) else None


# ---------------------------------------------------------------------------
# Multipart responses, counted on the fly


def boundary_of(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    return None


class PartCounter:
    """Counts ``--boundary`` delimiters in a stream fed chunk by chunk (the closing one included)."""

    def __init__(self, boundary: bytes) -> None:
        self.needle = b"--" + boundary
        self.tail = b""
        self.delimiters = 0

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk if self.tail else chunk
        self.delimiters += data.count(self.needle)
        self.tail = data[-(len(self.needle) - 1) :]

    @property
    def parts(self) -> int:
        return max(0, self.delimiters - 1)


def first_part(body: bytes, boundary: bytes) -> tuple[str, int, int]:
    """(Content-Type, size) of the first part of a buffered multipart body, and the number of parts."""
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    parts = [p for p in pieces[1:] if not p.startswith(b"--")]
    if not parts:
        return "", 0, 0
    head, _, content = parts[0].partition(b"\r\n\r\n")
    content_type = ""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode(errors="replace")
    if content.endswith(b"\r\n"):
        content = content[:-2]
    return content_type, len(content), len(parts)


# ---------------------------------------------------------------------------
# Loading the corpus


async def ensure_loaded(client: httpx.AsyncClient, endpoint: Endpoint, ctx: Context) -> LoadInfo | None:
    """Store the retrieve corpus into this target once; the LoadInfo if this call did it."""
    opts: WadoOptions = ctx.wado
    key = (endpoint.target, endpoint.app_pid)
    if key in opts.loaded:
        return None
    corpus = opts.corpus
    assert corpus is not None
    jobs = [(build_body(instances), len(instances)) for _, instances in corpus.uploads]
    print(f"[{endpoint.target}] retrieve: storing {corpus.instance_count} instances by STOW ...", flush=True)
    posted = await _post_all(endpoint, jobs, ctx.concurrency)
    info = LoadInfo(
        corpus.instance_count,
        sum(len(i) for _, instances in corpus.uploads for i in instances),
        posted.elapsed,
        [f"load: {e}" for e in posted.errors],
        [f"load: {w}" for w in posted.warnings],
    )
    opts.loaded[key] = info
    waited = _quiet(endpoint, opts)
    print(
        f"[{endpoint.target}] retrieve: stored in {posted.elapsed:.1f} s; waited {waited:.0f} s", flush=True
    )
    return info


def _quiet(endpoint: Endpoint, opts: WadoOptions) -> float:
    """After a load: let the target finish its background work (Orthanc's jobs, autovacuum)."""
    return wait_until_quiet(0.10, opts.quiet_wait, endpoint.target) if opts.quiet_wait > 0 else 0.0


def _result(
    workload: str,
    detail: WadoDetail,
    requests: int,
    elapsed: float,
    latencies: list[float],
    proc: ProcStats,
) -> Result:
    load = detail.load
    errors = list(load.errors) if load else []
    warnings = list(load.warnings) if load else []
    for m in detail.measures.values():
        errors += [f"{m.key}: {e}" for e in m.errors[:5]]
        warnings += [f"{m.key}: {q}" for q in m.quirks]
    return Result(
        workload=workload,
        requests=requests,
        instances=requests,  # so inst/s (used to pick the median round) is requests/s
        payload_bytes=load.payload_bytes if load else 0,  # what this workload stored (storage check)
        elapsed=elapsed,
        latencies=latencies,
        proc=proc,
        sent_instances=load.instances if load else 0,
        errors=errors,
        warnings=warnings,
        extra=detail,
    )


def _squeeze(text: str, limit: int = 200) -> str:
    """An error body as one line: the message of a JSON error (Orthanc's Details/Message, ours'
    message), else the text with its whitespace collapsed."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("message", "Message", "Details") if body.get(k)]
        text = " / ".join(dict.fromkeys(parts)) or text
    return " ".join(text[:2000].split())[:limit]


def _budget_left(started: float, done: int) -> bool:
    return done < MIN_REQUESTS or time.perf_counter() - started <= BUDGET_SECONDS


async def _choose_accept(
    client: httpx.AsyncClient, url: str, accepts: list[str], measure: Measure
) -> str | None:
    """The first Accept the target answers with 200; refusals are recorded as quirks."""
    for accept in accepts:
        try:
            async with client.stream("GET", url, headers={"Accept": accept}) as response:
                body = b""
                async for chunk in response.aiter_raw():
                    if len(body) < 2000:
                        body += chunk[:2000]
                status = response.status_code
        except httpx.HTTPError as exc:
            measure.quirks.append(f"Accept {accept!r}: {type(exc).__name__}: {exc}")
            continue
        if status == 200:
            if accept != accepts[0]:
                measure.quirks.append(f"measured with the fallback Accept {accept!r}")
            return accept
        text = _squeeze(body.decode(errors="replace"))
        measure.statuses[status] += 1
        if status not in REFUSED:  # e.g. 404: another Accept will not help
            measure.errors.append(f"HTTP {status}: {text}")
            return None
        measure.quirks.append(f"Accept {accept!r} → HTTP {status}: {text}")
    measure.errors.append("no Accept header was answered with 200")
    return None


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
        measure.errors.append(f"HTTP {answer.status}: {_squeeze(answer.text)}")
        return None
    measure.content_type = measure.content_type or answer.content_type
    parts = counters[0].parts if counters else 0
    if measure.expected_parts and parts != measure.expected_parts:
        measure.errors.append(f"{parts} parts in the response, {measure.expected_parts} expected")
    return answer


def _record(measure: Measure, answer: rawhttp.Answer, parts: int) -> None:
    measure.latencies.append(answer.elapsed)
    measure.first_byte.append(answer.first_byte)
    measure.body_bytes += answer.nbytes
    measure.parts.append(parts)


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
    accept = await _choose_accept(client, url, [STUDY_ACCEPT, STUDY_FALLBACK], measure)
    if accept is None:
        return _result("wado-study", detail, 0, 0.0, [], _idle(endpoint))
    measure.accept = accept

    async def clients(requests: int, record: bool) -> None:
        queue = list(range(requests))
        started = time.perf_counter()

        async def worker() -> None:
            async with rawhttp.Connection(endpoint.base_url, headers=endpoint.headers) as conn:
                while queue and (not record or _budget_left(started, len(measure.latencies))):
                    queue.pop()
                    answer = await _stream_one(conn, url, accept, measure)
                    if answer is not None and record:
                        _record(measure, answer, measure.expected_parts)
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
    return _result(
        "wado-study", detail, len(measure.latencies), measure.elapsed, measure.latencies, measure.proc
    )


def _idle(endpoint: Endpoint) -> ProcStats:
    with ProcessSampler(lambda: [endpoint.app_pid], lambda: []) as sampler:
        pass
    return sampler.stats()


# ---------------------------------------------------------------------------
# Sequential small requests: metadata and frames


Check = Callable[[rawhttp.Answer], tuple[int, str | None]]  # -> (items in the response, error)


async def _sequential(
    conn: rawhttp.Connection,
    url: str,
    accept: str,
    measure: Measure,
    warmup: int,
    requests: int,
    check: Check,
) -> None:
    """``warmup`` then ``requests`` GETs one after the other over ``conn``, each body checked."""
    headers = {"Accept": accept}
    for _ in range(warmup):
        with contextlib.suppress(rawhttp.HttpError):
            await conn.get(url, headers)
    started = time.perf_counter()
    for n in range(requests):
        if not _budget_left(started, n):
            measure.capped = requests - n
            break
        try:
            answer = await conn.get(url, headers, keep_body=True)
        except rawhttp.HttpError as exc:
            measure.errors.append(str(exc))
            continue
        measure.statuses[answer.status] += 1
        if answer.status != 200:
            measure.errors.append(f"HTTP {answer.status}: {_squeeze(answer.text)}")
            continue
        items, error = check(answer)
        if error and len(measure.errors) < 5:
            measure.errors.append(error)
        _record(measure, answer, items)
    measure.elapsed = time.perf_counter() - started


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
                await _sequential(
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
    return _result(
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
                    accept = await _choose_accept(client, url, [FRAME_ACCEPT, FRAME_FALLBACK], measure)
                    if accept is None:
                        continue
                    measure.accept = accept
                    await _sequential(
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
    return _result("wado-frames", detail, len(latencies), proc.wall, latencies, proc)


# ---------------------------------------------------------------------------
# Accept probes: which Accept headers a target answers, and with what (not timed)

ELE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
PROBES: tuple[tuple[str, str, str], ...] = (  # (label, instance key + "/frames" or "", Accept)
    ("instance, multipart dicom, no transfer-syntax", "ct", 'multipart/related; type="application/dicom"'),
    ("instance, multipart dicom, transfer-syntax=*", "ct", STUDY_ACCEPT),
    (
        "instance, multipart dicom, transfer-syntax=ELE (as stored)",
        "ct",
        f'multipart/related; type="application/dicom"; transfer-syntax={ELE}',
    ),
    ("instance, single-part application/dicom", "ct", "application/dicom"),
    ("instance, application/dicom+json (metadata media type)", "ct", "application/dicom+json"),
    (
        "J2K instance, multipart dicom, transfer-syntax=ELE (transcode)",
        "mf-j2k",
        f'multipart/related; type="application/dicom"; transfer-syntax={ELE}',
    ),
    ("CT frame, octet-stream, no transfer-syntax", "ct/frames", FRAME_FALLBACK),
    (
        "CT frame, octet-stream, transfer-syntax=ELE",
        "ct/frames",
        f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}',
    ),
    ("J2K frame, octet-stream, transfer-syntax=*", "mf-j2k/frames", FRAME_ACCEPT),
    ("J2K frame, octet-stream, no transfer-syntax (decode)", "mf-j2k/frames", FRAME_FALLBACK),
    ("J2K frame, image/jp2", "mf-j2k/frames", 'multipart/related; type="image/jp2"'),
    (
        "J2K frame, image/jp2, transfer-syntax=J2K lossless",
        "mf-j2k/frames",
        f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}',
    ),
    ("RLE frame, image/dicom-rle", "mf-rle/frames", 'multipart/related; type="image/dicom-rle"'),
    ("RLE frame, octet-stream, no transfer-syntax (decode)", "mf-rle/frames", FRAME_FALLBACK),
)


async def probe_accepts(
    client: httpx.AsyncClient, endpoint: Endpoint, corpus: RetrieveCorpus
) -> dict[str, str]:
    frames = {f.key: f for f in corpus.frames}
    out: dict[str, str] = {}
    for label, where, accept in PROBES:
        key, _, level = where.partition("/")
        frame = frames.get(key)
        if frame is None:
            continue
        path = frame.path() if level else frame.path().rsplit("/frames/", 1)[0]
        try:
            response = await client.get(endpoint.dicomweb_root + path, headers={"Accept": accept})
        except httpx.HTTPError as exc:
            out[label] = f"{type(exc).__name__}"
            continue
        out[label] = describe_answer(response)
    return out


def describe_answer(response: httpx.Response) -> str:
    """'200: multipart, 1 part application/octet-stream; transfer-syntax=..., 131072 B' or '406: message'."""
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if status != 200:
        return f"{status}: {_squeeze(response.text, 120)}"
    boundary = boundary_of(content_type)
    if boundary is None:
        return f"200: {content_type.split(';')[0]}, {len(response.content)} B"
    part_type, size, parts = first_part(response.content, boundary)
    return f"200: {parts} part(s) {part_type or '(no Content-Type)'}, {size} B"


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
    _quiet(endpoint, opts)
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
        _record(measure, answer, big.count)
        measure.elapsed = answer.elapsed
    return _result(
        "wado-big", detail, len(measure.latencies), measure.elapsed, measure.latencies, measure.proc
    )
