"""What the orders workloads share: tiny studies to store, the feed follower, tokens, figures.

Every study here is one small CT instance (16 x 16 pixels, about 1 KB) in a study of its own, so
what is timed is the workflow (arrival row, stability, QC, claim, report), not the byte path the
STOW suite measures.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.filewriter import dcmwrite

from bench.corpus.ct import CorpusSpec, _dataset
from bench.corpus.multipart import build_body
from bench.harness.target import Endpoint

API = "/api/v1"


@dataclass
class OrdersDetail:
    """One workload's figures (name -> value, ms or per second), the lines that explain them, and
    EXPLAIN plans (the 1M listing)."""

    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plans: dict[str, str] = field(default_factory=dict)


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q`` percentile of ``seconds`` in milliseconds (NaN for none)."""
    return float(np.percentile(seconds, q)) * 1000 if seconds else math.nan


def summary(name: str, seconds: list[float]) -> dict[str, float]:
    """p50, p95, max (ms) and the count of a latency sample, keyed ``name.p50`` ..."""
    return {
        f"{name}.p50": percentile_ms(seconds, 50),
        f"{name}.p95": percentile_ms(seconds, 95),
        f"{name}.max": max(seconds) * 1000 if seconds else math.nan,
        f"{name}.n": float(len(seconds)),
    }


def study_bodies(name: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` one-instance studies as (Study Instance UID, STOW-RS multipart body)."""
    spec = CorpusSpec(name, 16, 16, series_count=count, instances_per_series=1, warmup_series=0, seed=seed)
    pixels = np.full((16, 16), 1000, dtype=np.uint16)
    out = []
    for s in range(count):
        ds = _dataset(spec, s, 0, pixels)
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        out.append((str(ds.StudyInstanceUID), build_body([buf.getvalue()])))
    return out


def report_pdf(size: int) -> bytes:
    """A valid one-page PDF padded to about ``size`` bytes with a comment stream (the analysis
    service's report is ~100 KB)."""
    text = b"BT /F1 18 Tf 72 770 Td (Bench report) Tj ET"
    pad = b"%" + b"x" * 78 + b"\n"
    filler = pad * max(0, (size - 700) // len(pad))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf, offsets = b"%PDF-1.4\n" + filler, []
    for n, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref, size_ = len(pdf), len(objects) + 1
    pdf += b"xref\n0 %d\n0000000000 65535 f\r\n" % size_
    pdf += b"".join(b"%010d 00000 n\r\n" % o for o in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size_, xref)
    return pdf


def api_client(
    endpoint: Endpoint, connections: int, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=endpoint.base_url + API,
        headers=headers if headers is not None else endpoint.headers,
        limits=limits,
        timeout=httpx.Timeout(120.0),
    )


def analysis_headers(endpoint: Endpoint) -> dict[str, str]:
    """A bearer token of the analysis client ``serve`` bootstraps (``dev-analysis.json``)."""
    client = json.loads((endpoint.workdir / "data" / "dev-analysis.json").read_text())
    answer = httpx.post(
        f"{endpoint.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
        timeout=30.0,
    )
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


async def feed_head(client: httpx.AsyncClient, types: str | None = None) -> str | None:
    """The feed's cursor after everything there now (read to its end)."""
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if types:
            params["types"] = types
        if cursor:
            params["after"] = cursor
        page = (await client.get("/events", params=params)).raise_for_status().json()
        cursor = page["next_cursor"] or cursor
        if not page["items"]:
            return cursor


class FeedFollower:
    """Follows the feed with long polls in a task, noting when each event was first seen
    (``seen[subject or id] = perf_counter()``) and how many were read."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        cursor: str | None,
        types: str | None,
        limit: int = 1000,
        wait: float = 10.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.client, self.cursor, self.types, self.limit, self.wait = client, cursor, types, limit, wait
        self.match = match  # only the events it accepts are noted in ``seen``
        self.seen: dict[str, float] = {}
        self.ids: list[tuple[int, float]] = []  # (event id, seen at)
        self.read = 0
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            params: dict[str, Any] = {"limit": self.limit, "wait": self.wait}
            if self.types:
                params["types"] = self.types
            if self.cursor:
                params["after"] = self.cursor
            try:
                answer = await self.client.get("/events", params=params)
            except httpx.HTTPError as exc:
                self.errors.append(f"feed: {exc!r}")
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            if answer.status_code != 200:
                self.errors.append(f"feed: HTTP {answer.status_code}: {answer.text[:200]}")
                await asyncio.sleep(0.1)
                continue
            page = answer.json()
            for item in page["items"]:
                self.read += 1
                if self.match is None or self.match(item):
                    self.seen.setdefault(item.get("subject") or item["id"], now)
                self.ids.append((int(item["id"]), now))
            self.cursor = page["next_cursor"] or self.cursor

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def wait_for(self, keys: set[str], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not keys <= self.seen.keys():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def wait_count(self, want: int, seconds: float) -> float | None:
        """Wait until ``want`` events were noted; the perf_counter of the last one (None: timed out)."""
        deadline = time.monotonic() + seconds
        while len(self.seen) < want:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.002)
        return max(self.seen.values())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def pg_dsn(workdir: Path) -> str:
    from bench.qido.index import ours_dsn

    return ours_dsn(workdir)
