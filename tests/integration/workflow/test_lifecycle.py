"""The lifecycle's core against the real PostgreSQL and pgqueuer's tables, steps run directly:
arrival rows in the ingest transaction, settle by quiet period and by commit, the automatic
order, QC, late instances.  (The queue's own delivery of these steps is in tests/e2e/workflow.)"""

from __future__ import annotations

import asyncio

import asyncpg

from dicomweb_server import events
from dicomweb_server.db import arrival, delete, orders
from dicomweb_server.ingest.origin import STOW_RS, Origin
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.jobs.queue import Later
from dicomweb_server.lifecycle import SETTLE_STEP, Action
from dicomweb_server.settings import IngestSettings, WorkflowSettings
from dicomweb_server.storage.memory import MemoryStore
from dicomweb_server.workflow import qc, stability
from tests.conftest import TENANT
from tests.support.dicomfiles import instance

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.20", "1.2.826.0.1.3680043.8.498.21"
QUIET = WorkflowSettings(quiet_seconds=0.0)
WAIT = WorkflowSettings(quiet_seconds=3600.0)


async def ingest(store: MemoryStore, pool: asyncpg.Pool, workflow: WorkflowSettings, *sops: int) -> None:
    origin = Origin(STOW_RS, "test-client")
    async with IngestSession(origin, TENANT, None, IngestSettings(), store, pool, workflow) as s:
        for n in sops:
            s.begin_part()
            await s.feed(instance(STUDY, SERIES, f"{SERIES}.{n}", seed=n))
            await s.end_part()
        await s.finish()


async def kinds(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        return [e.kind for e in await events.read(conn, 0, 1000) if e.kind != events.INSTANCE_STORED]


async def order_status(pool: asyncpg.Pool) -> list[tuple[str, str | None]]:
    rows = await pool.fetch("SELECT status, reason FROM orders WHERE tenant = $1 ORDER BY created_at", TENANT)
    return [(r["status"], r["reason"]) for r in rows]


async def test_quiet_period_then_order_then_qc_then_pending(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    await ingest(store, db, QUIET, 1, 2)
    row = await db.fetchrow("SELECT * FROM arrival WHERE tenant = $1 AND study_uid = $2", TENANT, STUDY)
    assert row["instances"] == 2 and row["state"] == "unstable" and row["open_sessions"] == 0
    assert row["channels"] == ["stow-rs"]
    queued = await db.fetch("SELECT entrypoint, dedupe_key FROM pgqueuer")
    assert [(q["entrypoint"], q["dedupe_key"]) for q in queued] == [
        (SETTLE_STEP, f"{SETTLE_STEP}:{TENANT}:{STUDY}")
    ]
    await stability.settle(db, QUIET, {"tenant": TENANT, "study": STUDY})
    assert await order_status(db) == [("stable", None)]
    order_id = await db.fetchval("SELECT id::text FROM orders")
    await qc.run(db, store, {"tenant": TENANT, "order": order_id})
    assert await order_status(db) == [("pending", None)]
    assert await kinds(db) == [
        "study.received",
        "study.stable",
        "order.created",
        "qc.completed",
        "order.status_changed",
        "order.status_changed",
    ]
    history = await db.fetch("SELECT status, actor FROM order_history ORDER BY pk")
    assert [h["status"] for h in history] == ["stable", "qc_passed", "pending"]


async def test_not_due_yet_asks_to_run_later(db: asyncpg.Pool) -> None:
    await ingest(MemoryStore(), db, WAIT, 1)
    try:
        await stability.settle(db, WAIT, {"tenant": TENANT, "study": STUDY})
    except Later as later:
        assert 3500 < later.seconds <= 3600
    else:
        raise AssertionError("a study inside its quiet period was made stable")
    assert await order_status(db) == []


async def test_commit_counts_then_late_instances_regress_the_order(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    await ingest(store, db, WAIT, 1, 2)
    short = await stability.commit(db, WAIT, TENANT, STUDY, 3, 1, "client")
    assert not short.stable and short.missing == {"instances": 1}
    assert await order_status(db) == []
    done = await stability.commit(db, WAIT, TENANT, STUDY, 2, 1, "client")
    assert done.stable
    assert await order_status(db) == [("stable", None)]
    order_id = await db.fetchval("SELECT id::text FROM orders")
    await qc.run(db, store, {"tenant": TENANT, "order": order_id})
    assert await order_status(db) == [("pending", None)]
    await ingest(store, db, WAIT, 3)  # a late instance before processing: back to unstable
    assert await order_status(db) == [("unstable", None)]
    assert await db.fetchval("SELECT state FROM arrival") == "unstable"
    assert (await stability.commit(db, WAIT, TENANT, STUDY, None, None, "client")).stable
    assert await order_status(db) == [("stable", None)]  # the same order goes on, through QC again
    await qc.run(db, store, {"tenant": TENANT, "order": order_id})
    assert await order_status(db) == [("pending", None)]


async def test_qc_fails_when_an_object_is_gone(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    await ingest(store, db, QUIET, 1)
    await stability.settle(db, QUIET, {"tenant": TENANT, "study": STUDY})
    key = await db.fetchval("SELECT object_key FROM instance")
    await store.delete(key)
    order_id = await db.fetchval("SELECT id::text FROM orders")
    await qc.run(db, store, {"tenant": TENANT, "order": order_id})
    assert await order_status(db) == [("failed", "qc")]
    result = await db.fetchval("SELECT qc::text FROM orders")
    assert "object missing" in result


async def test_a_study_sent_again_whole_is_a_duplicate_not_a_second_analysis(db: asyncpg.Pool) -> None:
    """The same SOP Instance UIDs again (here after the first copy was deleted, under another Study
    Instance UID): the order-independent digest matches an order already processing, so the new
    order says it is a duplicate of it and is not analysed; retry is the explicit reprocessing."""
    store = MemoryStore()
    await ingest(store, db, QUIET, 2, 1)
    await stability.settle(db, QUIET, {"tenant": TENANT, "study": STUDY})
    first = await db.fetchval("SELECT id::text FROM orders")
    await qc.run(db, store, {"tenant": TENANT, "order": first})
    async with db.acquire() as conn, conn.transaction():
        assert await orders.transition(conn, TENANT, first, Action.CLAIM, "test") is not None
    await db.execute("DELETE FROM study WHERE study_uid = $1", STUDY)
    again = "1.2.826.0.1.3680043.8.498.29"
    origin = Origin(STOW_RS, "test-client")
    async with IngestSession(origin, TENANT, None, IngestSettings(), store, db, QUIET) as s:
        for n in (1, 2):  # the other order of arrival: the digest does not care
            s.begin_part()
            await s.feed(instance(again, SERIES + ".9", f"{SERIES}.{n}", seed=n))
            await s.end_part()
        await s.finish()
    await stability.settle(db, QUIET, {"tenant": TENANT, "study": again})
    rows = await db.fetch("SELECT status, reason, duplicate_of::text AS dup FROM orders ORDER BY created_at")
    assert [(r["status"], r["reason"], r["dup"]) for r in rows] == [
        ("processing", None, None),
        ("failed", "duplicate", first),
    ]
    queued = await db.fetch("SELECT dedupe_key FROM pgqueuer WHERE entrypoint = 'order.qc'")
    assert [q["dedupe_key"] for q in queued] == [f"order.qc:{first}"]  # none for the duplicate


async def test_the_force_complete_limit_ends_a_study_by_the_tenant_policy(db: asyncpg.Pool) -> None:
    """A study that never goes quiet (quiet period an hour, limit a moment after the first
    instance) is ended by the force-complete policy: proceed, hold for review, or fail."""
    store = MemoryStore()
    results = {}
    for policy in ("proceed", "hold", "fail"):
        await db.execute(
            "TRUNCATE arrival, orders, order_study, order_history, study, series, instance CASCADE"
        )
        forced = WorkflowSettings(quiet_seconds=3600.0, force_seconds=0.01, force_policy=policy)
        await ingest(store, db, forced, 1)
        await asyncio.sleep(0.05)
        await stability.settle(db, forced, {"tenant": TENANT, "study": STUDY})
        arrival = await db.fetchrow("SELECT state, stable_by FROM arrival")
        results[policy] = (arrival["state"], arrival["stable_by"], await order_status(db))
    assert results == {
        "proceed": ("stable", "force", [("stable", None)]),
        "hold": ("held", "force", []),
        "fail": ("stable", "force", [("failed", "qc")]),
    }
    # A held study waits for a person: a commit releases it, and it becomes an order.
    await db.execute("TRUNCATE arrival, orders, order_study, order_history, study, series, instance CASCADE")
    held = WorkflowSettings(quiet_seconds=3600.0, force_seconds=0.01, force_policy="hold")
    await ingest(store, db, held, 1)
    await asyncio.sleep(0.05)
    await stability.settle(db, held, {"tenant": TENANT, "study": STUDY})
    assert await db.fetchval("SELECT state FROM arrival") == "held"
    assert (await stability.commit(db, held, TENANT, STUDY, None, None, "client")).stable
    assert await db.fetchrow("SELECT state, stable_by FROM arrival") == ("stable", "commit")
    assert await order_status(db) == [("stable", None)]


async def test_an_open_session_keeps_its_study_receiving(db: asyncpg.Pool) -> None:
    """No study is stable while a request (or association) carrying it is open, even past its
    quiet period; the session's end clears the mark in the transaction that indexes it."""
    store = MemoryStore()
    await ingest(store, db, QUIET, 1)
    origin = Origin(STOW_RS, "test-client")
    async with IngestSession(origin, TENANT, None, IngestSettings(), store, db, QUIET) as s:
        s.begin_part()
        await s.feed(instance(STUDY, SERIES, f"{SERIES}.2", seed=2))
        await s.end_part()
        assert await db.fetchval("SELECT open_sessions FROM arrival") == 1
        try:
            await stability.settle(db, QUIET, {"tenant": TENANT, "study": STUDY})
        except Later as later:
            assert later.seconds == stability.RECEIVING_RECHECK
        else:
            raise AssertionError("a study was made stable while a session carrying it was open")
        await s.finish()
    assert await db.fetchrow("SELECT open_sessions, instances FROM arrival") == (0, 2)
    await stability.settle(db, QUIET, {"tenant": TENANT, "study": STUDY})
    assert await order_status(db) == [("stable", None)]


async def test_a_failed_session_leaves_no_receiving_mark(db: asyncpg.Pool) -> None:
    origin = Origin(STOW_RS, "test-client")
    async with IngestSession(origin, TENANT, None, IngestSettings(), MemoryStore(), db, QUIET) as s:
        s.begin_part()
        data = instance(STUDY, SERIES, f"{SERIES}.1", seed=1)
        await s.feed(data[: len(data) // 2])  # cut short: 0xC000, nothing stored
        await s.end_part()
        await s.finish()
    assert await db.fetchval("SELECT count(*) FROM arrival") == 0


async def test_deletes_leave_the_arrival_row(db: asyncpg.Pool) -> None:
    """DELETE of an instance takes it out of its study's counts and digest; of the whole study,
    the row goes (a copy sent later arrives afresh)."""
    await ingest(MemoryStore(), db, WAIT, 1, 2)
    async with db.acquire() as conn, conn.transaction():
        assert await delete.delete(conn, TENANT, STUDY, SERIES, f"{SERIES}.2")
    row = await db.fetchrow("SELECT instances, digest::text AS digest FROM arrival")
    assert row["instances"] == 1
    assert int(row["digest"], 2) == arrival.uid_digest([f"{SERIES}.1"])
    async with db.acquire() as conn, conn.transaction():
        assert await delete.delete(conn, TENANT, STUDY)
    assert await db.fetchval("SELECT count(*) FROM arrival") == 0
