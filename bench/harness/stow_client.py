"""Loading a target by STOW-RS: POST prebuilt bodies with the lean client and check each answer.

Every suite loads its corpus this way (the STOW suite measures it); the check reads the Store
Instances Response (PS3.18 10.5.3: ReferencedSOPSequence, FailedSOPSequence and their reasons)
so a server that acknowledges what it did not store cannot look fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.corpus.multipart import CONTENT_TYPE
from bench.harness import rawhttp
from bench.harness.target import Endpoint

STOW_HEADERS = {"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
REFERENCED_SOP_SEQ, FAILED_SOP_SEQ = "00081199", "00081198"
WARNING_REASON, FAILURE_REASON = "00081196", "00081197"


def _reasons(items: list[dict[str, Any]], tag: str) -> str:
    codes = Counter(f"0x{item[tag]['Value'][0]:04X}" for item in items if item.get(tag, {}).get("Value"))
    return ", ".join(f"{code} x{n}" for code, n in codes.items())


def check_response(
    endpoint: Endpoint, code: int, content: bytes, headers: Mapping[str, str], instances: int, body_bytes: int
) -> tuple[str | None, str | None]:
    """(error, warning): error if not every instance was stored; warning if stored but not a plain 200."""
    text = content.decode(errors="replace")
    if code not in (200, 202, 409):
        return f"HTTP {code}: {text[:300]}", None
    try:
        payload = json.loads(content)
    except ValueError:
        return f"HTTP {code}, not JSON ({headers.get('content-type')}): {text[:200]}", None
    if not endpoint.stores_dicom:
        got = payload.get("received")
        return (None if got == body_bytes else f"sink received {got} of {body_bytes} bytes"), None
    stored = payload.get(REFERENCED_SOP_SEQ, {}).get("Value", [])
    failed = payload.get(FAILED_SOP_SEQ, {}).get("Value", [])
    summary = f"HTTP {code}: stored {len(stored)}/{instances}, failed {len(failed)}"
    if failed:
        summary += f" (failure reasons {_reasons(failed, FAILURE_REASON)})"
    if warned := _reasons(stored, WARNING_REASON):
        summary += f" (warning reasons {warned})"
    if header := headers.get("warning"):
        summary += f" (Warning: {header})"
    if failed or len(stored) != instances:
        return summary, None
    return None, (summary if code != 200 or warned else None)


@dataclass
class Posted:
    latencies: list[float]
    errors: list[str]
    warnings: list[str]
    elapsed: float


async def post_all(endpoint: Endpoint, jobs: Sequence[tuple[bytes, int]], concurrency: int) -> Posted:
    """POST each (body, instance count), ``concurrency`` at a time, each over its own keep-alive connection
    with the lean client (bench/rawhttp.py); returns latencies, errors, wall time."""
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    errors: list[str] = []
    warnings: list[str] = []

    async def worker() -> None:
        async with rawhttp.Connection(endpoint.base_url, 900.0, endpoint.headers) as conn:
            while not queue.empty():
                body, count = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    answer = await conn.post(endpoint.stow_url, STOW_HEADERS, body)
                except rawhttp.HttpError as exc:
                    errors.append(str(exc))
                    continue
                latencies.append(time.perf_counter() - t0)
                error, warning = check_response(
                    endpoint, answer.status, bytes(answer.body), answer.headers, count, len(body)
                )
                if error:
                    errors.append(error)
                if warning:
                    warnings.append(warning)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Posted(latencies, errors, warnings, time.perf_counter() - t0)
