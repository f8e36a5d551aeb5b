"""Measurements 4 and 5: the orders listing at 1M orders, and the change feed under 1,000 events/s.

Both load the server's own database directly (asyncpg on its embedded PostgreSQL's socket) and
read over HTTP, as a client would.  The 1M load is realistic rather than uniform: several
tenants (``dev``, the token's, holds half), about 1% pending, patient ids spread over about 100k
patients, creation times spread over a year; then VACUUM ANALYZE.  The listing's SQL is taken from
``db/order_views.py`` itself (``list_orders`` run on a recording connection), so the EXPLAIN shown is
the query the server sends.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
import httpx

from bench.harness.target import Endpoint
from bench.orders.common import FeedFollower, OrdersDetail, api_client, feed_head, pg_dsn, summary

TENANTS = ("bench-a", "bench-b", "bench-c")  # beside the token's tenant, which gets half the orders
PATIENTS = 100_000
PENDING_SHARE = 0.01
LISTING_LIMIT = 100  # the listing's default page


def load_sql(orders: int, tenant: str) -> list[str]:
    """The statements of the bulk load: a scratch source table, then orders and order_study from it.

    Half the rows are ``tenant``'s, the rest spread over ``TENANTS``; 1% pending (with
    ``pending_since``), 2% failed, the rest delivered; one study per order, its patient one of
    ``PATIENTS``; created one every ~31 s back from now (a year for 1M)."""
    others = "ARRAY[" + ", ".join(f"'{t}'" for t in TENANTS) + "]"
    return [
        "SELECT setseed(0.4242)",
        "DROP TABLE IF EXISTS bench_orders_src",
        "CREATE UNLOGGED TABLE bench_orders_src AS SELECT gen_random_uuid() AS id, "
        f"CASE WHEN r1 < 0.5 THEN '{tenant}' "
        f"ELSE ({others})[1 + floor((r1 - 0.5) * 2 * {len(TENANTS)})::int] END AS tenant, "
        f"CASE WHEN r2 < {PENDING_SHARE} THEN 'pending' WHEN r2 < {PENDING_SHARE + 0.02} THEN 'failed' "
        "ELSE 'delivered' END AS status, "
        f"'BP' || lpad(floor(r3 * {PATIENTS})::int::text, 6, '0') AS patient_id, "
        "'1.2.826.0.1.3680043.8.498.77.' || g AS study_uid, "
        f"now() - make_interval(secs => ({orders} - g) * 31.0 + 60) AS created_at "
        "FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3 "
        f"FROM generate_series(1, {orders}) g) x",
        "INSERT INTO orders "
        "(id, tenant, status, reason, source, created_at, updated_at, pending_since, attempts) "
        "SELECT id, tenant, status, CASE WHEN status = 'failed' THEN 'analysis' END, 'auto', created_at, "
        "created_at, CASE WHEN status = 'pending' THEN created_at END, "
        "CASE WHEN status = 'pending' THEN 0 ELSE 1 END FROM bench_orders_src ORDER BY created_at",
        "INSERT INTO order_study (order_id, tenant, study_uid, patient_id, created_at) "
        "SELECT id, tenant, study_uid, patient_id, created_at FROM bench_orders_src ORDER BY created_at",
    ]


class Recorder:
    """A stand-in connection that records the SQL ``list_orders`` sends (and answers no rows), so
    the EXPLAIN is of the server's own query text."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []


async def listing_sql(tenant: str, **filters: Any) -> tuple[str, tuple[Any, ...]]:
    from dicomweb_server.db import order_views

    rec = Recorder()
    await order_views.list_orders(rec, tenant, order_views.Filters(**filters), None, LISTING_LIMIT + 1)  # type: ignore[arg-type]
    return rec.calls[0]


async def bulk_load(dsn: str, count: int, tenant: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    steps: dict[str, float] = {}
    try:
        await conn.execute("SET session_replication_role = replica")  # FK triggers off, this session only
        await conn.execute("SET maintenance_work_mem = '512MB'")
        t0 = time.perf_counter()
        for sql in load_sql(count, tenant):
            await conn.execute(sql)
        steps["load_s"] = time.perf_counter() - t0
        await conn.execute("DROP TABLE bench_orders_src")
        await conn.execute("SET session_replication_role = origin")
        t1 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE orders")
        await conn.execute("VACUUM ANALYZE order_study")
        await conn.execute("CHECKPOINT")
        steps["vacuum_s"] = time.perf_counter() - t1
        steps["orders_total"] = float(await conn.fetchval("SELECT count(*) FROM orders"))
        steps["tenant_orders"] = float(
            await conn.fetchval("SELECT count(*) FROM orders WHERE tenant = $1", tenant)
        )
        steps["tenant_pending"] = float(
            await conn.fetchval(
                "SELECT count(*) FROM orders WHERE tenant = $1 AND status = 'pending'", tenant
            )
        )
    finally:
        await conn.close()
    return steps


async def explain(dsn: str, sql: str, args: tuple[Any, ...]) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


async def timed_gets(
    client: httpx.AsyncClient, params: list[dict[str, str]], warmup: int, check: Any
) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    for k, p in enumerate(params[:warmup] + params):
        t0 = time.perf_counter()
        answer = await client.get("/orders", params=p)
        elapsed = time.perf_counter() - t0
        if answer.status_code != 200:
            errors.append(f"{p}: HTTP {answer.status_code}: {answer.text[:200]}")
            continue
        if problem := check(p, answer.json()):
            errors.append(f"{p}: {problem}")
        if k >= warmup:
            latencies.append(elapsed)
    return latencies, errors


async def listing_at_scale(endpoint: Endpoint, count: int, requests: int) -> OrdersDetail:
    """Measurement 4: bulk-load ``count`` orders, then ``requests`` GETs each of ?status=pending and
    ?patient_id=X (X one of the token tenant's patients in turn), sequential on one connection."""
    detail = OrdersDetail()
    dsn = pg_dsn(endpoint.workdir)
    tenant = endpoint.tenant
    steps = await bulk_load(dsn, count, tenant)
    detail.figures.update(steps)
    conn = await asyncpg.connect(dsn)
    try:
        patients = [
            r[0]
            for r in await conn.fetch(
                "SELECT patient_id FROM (SELECT DISTINCT patient_id FROM order_study WHERE tenant = $1 "
                "AND patient_id LIKE 'BP%') p ORDER BY md5(patient_id) LIMIT $2",
                tenant,
                requests,
            )
        ]
        expected = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT patient_id, count(*) FROM order_study WHERE tenant = $1 AND patient_id = ANY($2) "
                "GROUP BY patient_id",
                tenant,
                patients,
            )
        }
    finally:
        await conn.close()
    pending_page = min(LISTING_LIMIT, int(steps["tenant_pending"]))

    def check(p: dict[str, str], page: dict[str, Any]) -> str | None:
        items = page["items"]
        if "status" in p:
            if len(items) != pending_page or any(i["status"] != "pending" for i in items):
                return f"{len(items)} items (want {pending_page} pending)"
        elif len(items) != min(LISTING_LIMIT, expected.get(p["patient_id"], 0)):
            return f"{len(items)} items, the patient has {expected.get(p['patient_id'])}"
        return None

    status_params = [{"status": "pending"}] * requests
    patient_params = [{"patient_id": pid} for pid in patients]
    errors: list[str] = []
    async with api_client(endpoint, 1) as api:
        for name, params in (("status", status_params), ("patient", patient_params)):
            latencies, errs = await timed_gets(api, params, 20, check)
            detail.figures.update(summary(name, latencies))
            errors += errs
    if errors:
        raise RuntimeError(f"{len(errors)} listing errors, first: {errors[0]}")
    for name, filters in (
        ("status=pending", {"status": "pending"}),
        ("patient_id", {"patient_id": patients[0]}),
    ):
        sql, args = await listing_sql(tenant, **filters)
        detail.plans[name] = f"-- {sql}\n-- args {list(args)}\n" + await explain(dsn, sql, args)
    detail.notes.append(
        f"{steps['orders_total']:.0f} orders ({steps['tenant_orders']:.0f} in tenant {tenant}, of which "
        f"{steps['tenant_pending']:.0f} pending; the rest over {len(TENANTS)} other tenants; patients over "
        f"{PATIENTS}) loaded in {steps['load_s']:.0f} s, VACUUM ANALYZE {steps['vacuum_s']:.0f} s; "
        f"{requests} requests each after 20 warm-up, sequential on one keep-alive connection"
    )
    return detail


async def feed_under_load(endpoint: Endpoint, rate: int, seconds: float) -> OrdersDetail:
    """Measurement 5: a reader following the feed (limit=1000, long polls) while a writer INSERTs
    ``rate`` events/s (batches every 50 ms) into the event table for the reader's tenant."""
    detail = OrdersDetail()
    dsn = pg_dsn(endpoint.workdir)
    tick = 0.05
    per_tick = max(1, round(rate * tick))
    batches: list[tuple[int, float]] = []  # (last id of the batch, committed at)
    async with api_client(endpoint, 2) as reader:
        follower = FeedFollower(reader, await feed_head(reader), None, limit=1000, wait=10)
        follower.start()
        conn = await asyncpg.connect(dsn)
        try:
            rng = random.Random(5)
            t0 = time.perf_counter()
            k = 0
            while time.perf_counter() - t0 < seconds:
                ids = await conn.fetch(
                    "INSERT INTO event (tenant, kind, subject, payload) SELECT $1, 'instance.stored', "
                    "'1.2.826.0.1.3680043.8.498.78.' || $2::bigint || '.' || g, "
                    "jsonb_build_object('study', '1.2.826.0.1.3680043.8.498.78.' || $2::bigint, "
                    "'size', $3::int) "
                    "FROM generate_series(1, $4) g RETURNING id",
                    endpoint.tenant,
                    k,
                    rng.randint(1000, 100000),
                    per_tick,
                )
                batches.append((max(r[0] for r in ids), time.perf_counter()))
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * tick - time.perf_counter()))
            wrote = time.perf_counter() - t0
            last = batches[-1][0]
            deadline = time.monotonic() + 30
            while (not follower.ids or follower.ids[-1][0] < last) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        finally:
            await conn.close()
            await follower.stop()
    if follower.errors:
        raise RuntimeError(follower.errors[0])
    seen = dict(follower.ids)
    missing = [b for b, _ in batches if b not in seen]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(batches)} batches never seen on the feed")
    lags = [seen[b] - at for b, at in batches]
    written = len(batches) * per_tick
    span = follower.ids[-1][1] - t0
    detail.figures.update(summary("lag", lags))
    detail.figures["written_per_s"] = written / wrote
    detail.figures["read_per_s"] = follower.read / span
    detail.figures["read_ratio"] = (follower.read / span) / (written / wrote)
    detail.figures["events"] = float(written)
    detail.notes.append(
        f"{written} events in {len(batches)} INSERT batches of {per_tick} over {wrote:.1f} s; "
        f"the reader read {follower.read} in {span:.1f} s"
    )
    return detail
