"""db/pool.py: connections, transactions and the rerun of a unit of work that lost a race."""

from __future__ import annotations

import asyncpg
import pytest

from dicomweb_server.db import pool as db_pool
from dicomweb_server.errors import ServiceUnavailable


async def _count(conn: db_pool.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM study WHERE tenant = 'pool-test'"))


async def test_a_transaction_commits_on_exit_and_rolls_back_on_an_exception(db: asyncpg.Pool) -> None:
    async with db_pool.transaction(db) as conn:
        await conn.execute("INSERT INTO study (tenant, study_uid) VALUES ('pool-test', '1.1')")
    with pytest.raises(LookupError):
        async with db_pool.transaction(db) as conn:
            await conn.execute("INSERT INTO study (tenant, study_uid) VALUES ('pool-test', '1.2')")
            raise LookupError
    async with db_pool.connection(db) as conn:
        assert await _count(conn) == 1


async def test_in_transaction_reruns_a_unit_of_work_that_lost_a_race(db: asyncpg.Pool) -> None:
    runs: list[int] = []

    async def work(conn: db_pool.Connection) -> str:
        runs.append(len(runs))
        await conn.execute(f"INSERT INTO study (tenant, study_uid) VALUES ('pool-test', '2.{len(runs)}')")
        if len(runs) < db_pool.ATTEMPTS:
            raise db_pool.Race  # the run's insert rolls back with it
        return "done"

    assert await db_pool.in_transaction(db, work) == "done"
    assert runs == list(range(db_pool.ATTEMPTS))
    async with db_pool.connection(db) as conn:
        assert await _count(conn) == 1  # only the last run's row


async def test_in_transaction_gives_up_with_a_503_after_its_attempts(db: asyncpg.Pool) -> None:
    runs = 0

    async def work(conn: db_pool.Connection) -> None:
        nonlocal runs
        runs += 1
        raise db_pool.Race

    with pytest.raises(ServiceUnavailable, match="index busy"):
        await db_pool.in_transaction(db, work)
    assert runs == db_pool.ATTEMPTS


async def test_other_errors_are_not_retried(db: asyncpg.Pool) -> None:
    runs = 0

    async def work(conn: db_pool.Connection) -> None:
        nonlocal runs
        runs += 1
        await conn.execute("SELECT 1/0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await db_pool.in_transaction(db, work)
    assert runs == 1


async def test_require_transaction(db: asyncpg.Pool) -> None:
    async with db_pool.connection(db) as conn:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            db_pool.require_transaction(conn)
    async with db_pool.transaction(db) as conn:
        db_pool.require_transaction(conn)


async def test_losing_the_database_is_a_503(database_url: str) -> None:
    pool = await db_pool.create_pool(database_url, 1)
    await db_pool.ping(pool)
    await pool.close()
    with pytest.raises(ServiceUnavailable):
        await db_pool.ping(pool)
    with pytest.raises(ServiceUnavailable):
        await db_pool.create_pool("postgresql://nobody@127.0.0.1:1/none", 1)


async def test_the_pool_sets_the_planner_settings_its_queries_were_measured_with(database_url: str) -> None:
    pool = await db_pool.create_pool(database_url, 1)
    try:
        async with db_pool.connection(pool) as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await pool.close()
