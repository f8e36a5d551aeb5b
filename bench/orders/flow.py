"""Measurements 1 to 3: claim → complete → delivered throughput (and the bare SKIP LOCKED loop),
commit → ``study.stable`` latency, and quiet period → stable lateness.

All three drive the running server over HTTP as its clients would: the dev client (tenant
``dev``) stores and commits, the analysis client ``serve`` bootstraps (``dev-analysis``) claims
and completes.  Only the bare loop talks to PostgreSQL directly, on the server's own database,
so that ours and the machine's limit are measured in the same run on the same instance.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any

import asyncpg
import httpx

from bench.harness.sampling import ProcessSampler
from bench.harness.servers import ours_executable
from bench.harness.stow_client import STOW_HEADERS
from bench.harness.target import Endpoint
from bench.orders.common import (
    FeedFollower,
    OrdersDetail,
    analysis_headers,
    api_client,
    feed_head,
    pg_dsn,
    report_pdf,
    study_bodies,
    summary,
)

WORKERS = 8
PDF_BYTES = 100_000
RESULT_JSON = json.dumps({"findings": [{"structure": "hippocampus", "volume_ml": 3.1}]}).encode()
QUIET_SECONDS = 2.0


async def store(
    client: httpx.AsyncClient, endpoint: Endpoint, bodies: list[tuple[str, bytes]], connections: int
) -> dict[str, float]:
    """STOW every study (``connections`` at a time); the perf_counter of each acknowledgement."""
    acked: dict[str, float] = {}
    queue = list(reversed(bodies))

    async def one() -> None:
        while queue:
            uid, body = queue.pop()
            answer = await client.post(endpoint.stow_url, content=body, headers=STOW_HEADERS)
            if answer.status_code != 200:
                raise RuntimeError(f"STOW {uid}: HTTP {answer.status_code}: {answer.text[:200]}")
            acked[uid] = time.perf_counter()

    await asyncio.gather(*(one() for _ in range(connections)))
    return acked


def stow_client(endpoint: Endpoint, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(headers=endpoint.headers, limits=limits, timeout=120.0)


async def count(client: httpx.AsyncClient, status: str) -> int:
    """Orders with ``status`` in the caller's tenant, by paging the listing."""
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"status": status, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/orders", params=params)).raise_for_status().json()
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


async def wait_count(
    client: httpx.AsyncClient, status: str, want: int, seconds: float, every: float
) -> float:
    """Poll until ``want`` orders have ``status``; the perf_counter when first seen so."""
    deadline = time.monotonic() + seconds
    while True:
        if await count(client, status) >= want:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: fewer than {want} orders {status} after {seconds:.0f} s")
        await asyncio.sleep(every)


MOVED = "order.status_changed"
FORM_BOUNDARY = "bench-orders-5d1c0e"


def completion_form(pdf: bytes, result: bytes) -> tuple[bytes, str]:
    """The completion's multipart/form-data body (RFC 7578), built once: the harness's CPU is the
    server's too on this machine, so the workers do not encode 100 KB per request."""
    parts = []
    for name, filename, kind, data in (
        ("pdf", "report.pdf", "application/pdf", pdf),
        ("json", "result.json", "application/json", result),
    ):
        head = (
            f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{FORM_BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={FORM_BOUNDARY}"


def _delivered(event: dict[str, Any]) -> bool:
    return bool(event.get("data", {}).get("to") == "delivered")


async def claim_throughput(endpoint: Endpoint, n: int, bare_rows: int) -> OrdersDetail:
    """Measurement 1: ``n`` pending orders, 8 workers claiming and completing them, orders/s from
    the first claim to the last order seen ``delivered``; then the bare loop."""
    detail = OrdersDetail()
    bodies = study_bodies("orders-claim", n, 1201)
    async with api_client(endpoint, 8) as api:
        t0 = time.perf_counter()
        async with stow_client(endpoint, 4) as stow:
            await store(stow, endpoint, bodies, 4)
        sem = asyncio.Semaphore(4)

        async def commit(uid: str) -> None:
            async with sem:
                r = await api.post(f"/studies/{uid}/commit", json={"expected_instances": 1})
                if r.status_code != 200:
                    raise RuntimeError(f"commit {uid}: HTTP {r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(commit(uid) for uid, _ in bodies))
        await wait_count(api, "pending", n, 600.0, 0.5)
        detail.notes.append(
            f"prepared {n} pending orders (STOW + commit + QC) in {time.perf_counter() - t0:.1f} s"
        )
        print(f"[{endpoint.target}] orders-claim: {detail.notes[-1]}; measuring", flush=True)
        form, form_type = completion_form(report_pdf(PDF_BYTES), RESULT_JSON)
        done: list[float] = []
        claims: list[float] = []
        completes: list[float] = []
        errors: list[str] = []
        async with api_client(endpoint, WORKERS, analysis_headers(endpoint)) as worker_api:

            async def worker(k: int) -> None:
                while len(done) < n:
                    t0 = time.perf_counter()
                    claim = await worker_api.post("/jobs/claim", json={"worker": f"bench-{k}", "wait": 5})
                    t1 = time.perf_counter()
                    if claim.status_code == 204:
                        return
                    if claim.status_code != 200:
                        errors.append(f"claim: HTTP {claim.status_code}: {claim.text[:200]}")
                        return
                    job = claim.json()["id"]
                    answer = await worker_api.post(
                        f"/jobs/{job}/complete", content=form, headers={"Content-Type": form_type}
                    )
                    claims.append(t1 - t0)
                    completes.append(time.perf_counter() - t1)
                    if answer.status_code not in (200, 201, 202):
                        errors.append(f"complete: HTTP {answer.status_code}: {answer.text[:200]}")
                        return
                    done.append(time.perf_counter())

            follower = FeedFollower(api, await feed_head(api, MOVED), MOVED, match=_delivered)
            follower.start()
            try:
                with ProcessSampler(lambda: [endpoint.app_pid], endpoint.aux_roots) as sampler:
                    start = time.perf_counter()
                    workers = asyncio.gather(*(worker(k) for k in range(WORKERS)))
                    delivered = await follower.wait_count(n, 600.0)
                    await workers
            finally:
                await follower.stop()
            if delivered is None:
                raise RuntimeError(f"only {len(follower.seen)} of {n} orders delivered after 600 s")
            cpu = sampler.stats()
        if errors:
            raise RuntimeError(f"{len(errors)} worker errors, first: {errors[0]}")
    elapsed = delivered - start
    detail.figures["ours.orders_per_s"] = n / elapsed
    detail.figures["ours.completed_per_s"] = n / (max(done) - start)
    detail.figures["ours.seconds"] = elapsed
    detail.figures["orders"] = float(n)
    detail.figures["cpu.server_ms"] = cpu.app_cpu * 1000 / n
    detail.figures["cpu.postgres_ms"] = cpu.aux_cpu * 1000 / n
    detail.figures["cpu.client_ms"] = cpu.client_cpu * 1000 / n
    detail.figures["cpu.foreign"] = cpu.foreign_cpu
    detail.figures.update(summary("claim", claims))
    detail.figures.update(summary("complete", completes))
    bare = await bare_loop(pg_dsn(endpoint.workdir), bare_rows)
    detail.figures["bare.rows_per_s"] = bare
    detail.figures["ratio"] = detail.figures["ours.orders_per_s"] / bare
    detail.notes.append(
        f"{n} orders claimed and completed (100 KB PDF + JSON) by {WORKERS} workers in {elapsed:.2f} s "
        f"(last completion answered after {max(done) - start:.2f} s); "
        f"bare loop {bare:.0f} rows/s over {bare_rows} rows"
    )
    return detail


async def bare_loop(dsn: str, rows: int) -> float:
    """The machine's limit for a claim: 8 connections, each claiming one row of a scratch table with
    ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`` + ``UPDATE`` + commit, until none is left."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute("DROP TABLE IF EXISTS bench_claim")
        await setup.execute(
            "CREATE TABLE bench_claim (id bigint PRIMARY KEY, status text NOT NULL, claimed_at timestamptz)"
        )
        await setup.execute("INSERT INTO bench_claim SELECT g, 'pending' FROM generate_series(1, $1) g", rows)
        await setup.execute("CREATE INDEX bench_claim_pending ON bench_claim (id) WHERE status = 'pending'")
        await setup.execute("ANALYZE bench_claim")
        conns = [await asyncpg.connect(dsn) for _ in range(WORKERS)]
        claimed = [0]

        async def loop(conn: asyncpg.Connection) -> None:
            while True:
                async with conn.transaction():
                    row = await conn.fetchval(
                        "SELECT id FROM bench_claim WHERE status = 'pending' ORDER BY id "
                        "FOR UPDATE SKIP LOCKED LIMIT 1"
                    )
                    if row is None:
                        return
                    await conn.execute(
                        "UPDATE bench_claim SET status = 'done', claimed_at = now() WHERE id = $1", row
                    )
                claimed[0] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in conns))
        elapsed = time.perf_counter() - t0
        for c in conns:
            await c.close()
        if claimed[0] != rows:
            raise RuntimeError(f"bare loop claimed {claimed[0]} of {rows} rows")
        await setup.execute("DROP TABLE bench_claim")
        return rows / elapsed
    finally:
        await setup.close()


async def commit_latency(endpoint: Endpoint, n: int) -> OrdersDetail:
    """Measurement 2: per study, STOW it, then time the commit's answer and its ``study.stable``
    on a feed long poll that was already waiting."""
    detail = OrdersDetail()
    bodies = study_bodies("orders-commit", n, 1202)
    answers: list[float] = []
    feed: list[float] = []
    async with (
        api_client(endpoint, 4) as api,
        api_client(endpoint, 2) as reader,
        stow_client(endpoint, 1) as stow,
    ):
        follower = FeedFollower(reader, await feed_head(reader, "study.stable"), "study.stable", wait=10)
        follower.start()
        try:
            for uid, body in bodies:
                await store(stow, endpoint, [(uid, body)], 1)
                await asyncio.sleep(0.01)  # the follower's long poll is waiting again
                t0 = time.perf_counter()
                r = await api.post(f"/studies/{uid}/commit", json={"expected_instances": 1})
                t1 = time.perf_counter()
                if r.status_code != 200:
                    raise RuntimeError(f"commit {uid}: HTTP {r.status_code}: {r.text[:200]}")
                if not await follower.wait_for({uid}, 15.0):
                    raise RuntimeError(f"no study.stable for {uid} on the feed within 15 s")
                answers.append(t1 - t0)
                feed.append(follower.seen[uid] - t0)
        finally:
            await follower.stop()
        if follower.errors:
            raise RuntimeError(follower.errors[0])
    detail.figures.update(summary("answer", answers))
    detail.figures.update(summary("feed", feed))
    detail.notes.append(
        f"{n} commits, one at a time, each right after its study's STOW, with a long poll "
        "(types=study.stable, wait=10) already waiting"
    )
    return detail


def set_quiet(endpoint: Endpoint, seconds: float) -> str:
    """``dicomweb-server tenants set <tenant> --quiet-seconds S`` against the target's database."""
    exe = ours_executable()
    if exe is None:
        raise RuntimeError("no dicomweb-server executable")
    env = {
        **os.environ,
        "DATABASE_URL": pg_dsn(endpoint.workdir),
        "DICOMWEB_DATA_DIR": str(endpoint.workdir / "data"),
    }
    done = subprocess.run(
        [str(exe), "tenants", "set", endpoint.tenant, "--quiet-seconds", f"{seconds:g}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tenants set: {done.stderr.strip()[-400:]}")
    return " ".join(["dicomweb-server tenants set", endpoint.tenant, "--quiet-seconds", f"{seconds:g}"])


async def quiet_lateness(endpoint: Endpoint, n: int) -> OrdersDetail:
    """Measurement 3: ``n`` studies stored concurrently under a short quiet period, no commit;
    per study, its ``study.stable`` on the feed minus its acknowledgement minus the quiet period."""
    detail = OrdersDetail()
    command = set_quiet(endpoint, QUIET_SECONDS)
    bodies = study_bodies("orders-quiet", n, 1203)
    async with api_client(endpoint, 2) as reader, stow_client(endpoint, 8) as stow:
        follower = FeedFollower(reader, await feed_head(reader, "study.stable"), "study.stable", wait=10)
        follower.start()
        try:
            t0 = time.perf_counter()
            acked = await store(stow, endpoint, bodies, 8)
            stored = time.perf_counter() - t0
            if not await follower.wait_for(set(acked), QUIET_SECONDS + 60.0):
                missing = len(set(acked) - follower.seen.keys())
                raise RuntimeError(
                    f"{missing} of {n} studies not stable {QUIET_SECONDS + 60:.0f} s after their STOW"
                )
        finally:
            await follower.stop()
    late = [follower.seen[uid] - at - QUIET_SECONDS for uid, at in acked.items()]
    detail.figures.update(summary("late", late))
    detail.figures["quiet"] = QUIET_SECONDS
    detail.notes.append(
        f"`{command}`; {n} one-instance studies stored over 8 connections in {stored:.2f} s, none committed"
    )
    return detail
