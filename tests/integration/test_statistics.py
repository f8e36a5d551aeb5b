"""Planner statistics follow a bulk ingest without waiting for autovacuum's next round."""

from __future__ import annotations

import asyncpg

from dicomweb_server import db as index


async def test_stale_tables_are_analyzed_and_fresh_ones_left_alone(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await conn.execute("ANALYZE study, series, instance")
        await conn.execute(
            "INSERT INTO study (tenant, study_uid) "
            "SELECT 'bulk', '1.2.' || g FROM generate_series(1, 2000) AS g"
        )
        await conn.execute("SELECT pg_stat_force_next_flush()")
    assert await index.analyze_if_stale(db) == ["study"]
    assert await db.fetchval(
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'study'"
    )
    assert await index.analyze_if_stale(db) == []  # nothing changed since
