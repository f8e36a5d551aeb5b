"""The change feed's reads (db/events.py ``feed``) and its retention (``prune``, ``pruned``, the
``events.prune`` job) against the real PostgreSQL: commit-safe order, tenants apart, nothing
skipped when transactions commit out of order, old events removed batch by batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from dicomweb_server import events
from dicomweb_server.jobs.runner import Parts, Runner
from dicomweb_server.storage.memory import MemoryStore
from dicomweb_server.workflow import jobs
from tests.conftest import OTHER_TENANT, TENANT, make_settings


def change(n: int, tenant: str = TENANT, kind: str = events.STUDY_RECEIVED) -> events.Change:
    return events.Change(tenant, kind, f"1.2.3.{n}", {"n": n})


async def append(pool: asyncpg.Pool, *changes: events.Change) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await events.append(conn, changes)


async def subjects(pool: asyncpg.Pool, after: events.Cursor | None = None, **kw: object) -> list[str]:
    async with pool.acquire() as conn:
        found = await events.feed(conn, str(kw.get("tenant", TENANT)), after, None, 100)
    return [str(e.subject) for e in found]


async def test_pages_resume_from_the_cursor_in_order_and_tenants_are_apart(db: asyncpg.Pool) -> None:
    await append(db, change(1), change(2, tenant=OTHER_TENANT), change(3))
    await append(db, change(4, kind=events.STUDY_STABLE))
    async with db.acquire() as conn:
        first = await events.feed(conn, TENANT, None, None, 2)
        assert [e.subject for e in first] == ["1.2.3.1", "1.2.3.3"]
        assert all(e.tenant == TENANT and e.cursor is not None for e in first)
        rest = await events.feed(conn, TENANT, first[-1].cursor, None, 2)
        assert [(e.subject, e.kind, e.payload) for e in rest] == [("1.2.3.4", events.STUDY_STABLE, {"n": 4})]
        assert await events.feed(conn, TENANT, rest[-1].cursor, None, 2) == []
        stable = await events.feed(conn, TENANT, None, (events.STUDY_STABLE,), 10)
        assert [e.subject for e in stable] == ["1.2.3.4"]
    assert await subjects(db, tenant=OTHER_TENANT) == ["1.2.3.2"]


async def test_a_transaction_that_commits_late_is_not_skipped(db: asyncpg.Pool) -> None:
    await append(db, change(0))
    async with db.acquire() as a:
        async with a.transaction():
            await events.append(a, [change(1)])  # A: the lower id, still open
            await append(db, change(2))  # B: a higher id, committed first
            # B is committed, but A (older) is still running: the feed stops before both.
            seen = await subjects(db)
            assert seen == ["1.2.3.0"]
            async with db.acquire() as conn:
                (zero,) = await events.feed(conn, TENANT, None, None, 10)
        # After A commits, a reader resuming from its last cursor gets A then B.
        async with db.acquire() as conn:
            after = await events.feed(conn, TENANT, zero.cursor, None, 10)
    assert [e.subject for e in after] == ["1.2.3.1", "1.2.3.2"]
    assert after[0].id < after[1].id


async def test_prune_removes_old_events_in_batches_and_remembers_the_newest_cursor(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await append(db, change(1), change(2), change(3))
    await append(db, change(4))
    async with db.acquire() as conn:
        assert await events.pruned(conn) is None
        every = await events.feed(conn, TENANT, None, None, 10)
    await db.execute(
        "UPDATE event SET created_at = now() - interval '40 days' WHERE id = ANY($1::bigint[])",
        [e.id for e in every[:3]],
    )
    # The periodic job, on a runner as the server runs it, with a short period and a batch of 1.
    parts = Parts(make_settings(database_url, tmp_path / "objects"), db, MemoryStore())
    job = jobs.JOBS["events.prune"](parts)
    assert job is not None and job.every == 60.0  # the server's period
    async with Runner({"events.prune": jobs.prune_job(parts, every=0.05, batch=1)}):
        for _ in range(100):
            if await db.fetchval("SELECT count(*) FROM event") == 1:
                break
            await asyncio.sleep(0.05)
    assert await subjects(db) == ["1.2.3.4"]
    async with db.acquire() as conn:
        assert await events.pruned(conn) == every[2].cursor
        # Nothing old is left: a further prune deletes none and keeps the cursor.
        assert await events.prune(conn, 30 * 86_400, 10) == 0
        assert await events.pruned(conn) == every[2].cursor


async def test_the_waker_wakes_on_commit_and_not_on_rollback(db: asyncpg.Pool) -> None:
    """A committed append wakes this process's long-polling readers at once (LISTEN/NOTIFY); one
    that rolled back does not; a wake-up between a reader's look and its wait is not lost."""
    from dicomweb_server.events import Change, Waker, append

    async with Waker(db) as waker:
        assert waker.listening
        seen = waker.generation
        async with db.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await append(conn, [Change("default", "study.stable", "1.2.3")])
            await tx.rollback()
        started = asyncio.get_running_loop().time()
        await waker.wait(0.5, seen)
        assert asyncio.get_running_loop().time() - started >= 0.45  # nothing woke it
        async with db.acquire() as conn, conn.transaction():
            await append(conn, [Change("default", "study.stable", "1.2.3")])
        await asyncio.sleep(0.2)  # the wake-up arrives before the reader waits: not lost
        started = asyncio.get_running_loop().time()
        await waker.wait(5, seen)
        assert asyncio.get_running_loop().time() - started < 1.0  # woken, not timed out after 5 s
        assert waker.generation > seen
