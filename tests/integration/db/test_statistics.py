"""Planner statistics follow a bulk ingest without waiting for autovacuum's next round."""

from __future__ import annotations

import asyncpg

from dicomweb_server.db import statistics as index
from dicomweb_server.db.pool import connection


async def test_stale_tables_are_analyzed_and_fresh_ones_left_alone(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await conn.execute("ANALYZE study, series, instance")
        await conn.execute(
            "INSERT INTO study (tenant, study_uid) "
            "SELECT 'bulk', '1.2.' || g FROM generate_series(1, 2000) AS g"
        )
        await conn.execute("SELECT pg_stat_force_next_flush()")
    async with connection(db) as conn:
        assert await index.analyze_if_stale(conn) == ["study"]
        assert await conn.fetchval(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'study'"
        )
        assert await index.analyze_if_stale(conn) == []  # nothing changed since


async def test_analyze_skips_the_stored_dicom_json(db: asyncpg.Pool) -> None:
    """Those documents are returned, never searched: ANALYZE must not read them (migration 0006)."""
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO study (tenant, study_uid, attrs) "
            """SELECT 'bulk', '1.3.' || g, jsonb_build_object('00100010', repeat('x', 4000) || g)
               FROM generate_series(1, 300) AS g"""
        )
        await conn.execute("ANALYZE study")
        analyzed = {
            row["attname"]
            for row in await conn.fetch("SELECT attname FROM pg_stats WHERE tablename = 'study'")
        }
    assert "study_uid" in analyzed
    assert "attrs" not in analyzed
    targets = await db.fetch(
        "SELECT attrelid::regclass::text AS t, attname, attstattarget FROM pg_attribute "
        "WHERE (attrelid, attname) IN (('instance'::regclass, 'metadata'), "
        "('study'::regclass, 'attrs'), ('series'::regclass, 'attrs'))"
    )
    assert sorted((r["t"], r["attname"], r["attstattarget"]) for r in targets) == [
        ("instance", "metadata", 0),
        ("series", "attrs", 0),
        ("study", "attrs", 0),
    ]


async def test_the_keeper_follows_the_instance_stored_events(db: asyncpg.Pool) -> None:
    """It starts at the newest event and reads on from there (ingest/jobs.py)."""
    from dicomweb_server import events
    from dicomweb_server.ingest.jobs import StatisticsKeeper

    keeper = StatisticsKeeper(db)
    await keeper.step()
    async with db.acquire() as conn:
        start = await events.latest(conn)
        assert keeper.cursor == start
        async with conn.transaction():
            await events.append(conn, [events.InstanceStored("bulk", "1.2", "1.2.3", "1.2.3.4", "k")])
        newest = await events.latest(conn)
    await keeper.step()
    assert keeper.cursor == newest > start
    await keeper.step()  # nothing new: the cursor stays
    assert keeper.cursor == newest
