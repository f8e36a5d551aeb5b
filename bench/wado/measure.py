"""What a WADO-RS measurement records, and the helpers every retrieve workload shares.

``Measure`` is one kind of request against one target; multipart answers (PS3.18 8.7.3.3) are
counted on the fly by their boundary, never kept; the Accept probes record what each target answers
to the Accept headers PS3.18 8.7.3.5 allows, and ``choose_accept`` falls back where one is refused.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from bench.corpus.retrieve import RetrieveCorpus
from bench.harness import rawhttp
from bench.harness.sampling import ProcStats
from bench.harness.target import Endpoint
from bench.harness.workload import Result

STUDY_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_FALLBACK = 'multipart/related; type="application/dicom"'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAME_FALLBACK = 'multipart/related; type="application/octet-stream"'
METADATA_ACCEPT = "application/dicom+json"
REFUSED = (400, 406, 415)  # an Accept header refused: the fallback is tried
BUDGET_SECONDS = 15.0  # measured requests of one kind stop after this long ...
MIN_REQUESTS = 10  # ... once at least this many were measured


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


def record(measure: Measure, answer: rawhttp.Answer, parts: int) -> None:
    """One good answer into the measure."""
    measure.latencies.append(answer.elapsed)
    measure.first_byte.append(answer.first_byte)
    measure.body_bytes += answer.nbytes
    measure.parts.append(parts)


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


def squeeze(text: str, limit: int = 200) -> str:
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


def budget_left(started: float, done: int) -> bool:
    return done < MIN_REQUESTS or time.perf_counter() - started <= BUDGET_SECONDS


async def choose_accept(
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
        text = squeeze(body.decode(errors="replace"))
        measure.statuses[status] += 1
        if status not in REFUSED:  # e.g. 404: another Accept will not help
            measure.errors.append(f"HTTP {status}: {text}")
            return None
        measure.quirks.append(f"Accept {accept!r} → HTTP {status}: {text}")
    measure.errors.append("no Accept header was answered with 200")
    return None


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
        return f"{status}: {squeeze(response.text, 120)}"
    boundary = boundary_of(content_type)
    if boundary is None:
        return f"200: {content_type.split(';')[0]}, {len(response.content)} B"
    part_type, size, parts = first_part(response.content, boundary)
    return f"200: {parts} part(s) {part_type or '(no Content-Type)'}, {size} B"
