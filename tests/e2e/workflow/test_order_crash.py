"""kill -9 of the server at each step of an order, a restart on the same data folder, database
and port, and the order completes exactly once (issue #12 "Tests"; README, "Background work"):
one report row, one ``delivered`` history row, each event once, one Encapsulated PDF instance
per study.

The steps: the study stored and not yet stable (its settle step survives in PostgreSQL); the
order pending (a worker claims it from the restarted server); the job claimed, the worker
process dying with it (the 5 s lease runs out, the order goes back to pending, the next claim
completes it as attempt 2) or working on through the restart; the completion acknowledged and
the delivery held by a row lock the test takes (before the report's instance is stored, after
it and before the move, or between the two studies of a group order): the ``report.deliver``
step, committed with the report, runs again after the restart, and a re-sent identical
instance adds nothing.  ``DICOMWEB_QUEUE_HEARTBEAT_SECONDS=2``: a step whose process died is
taken again within seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.e2e.workflow.conftest import StartWorker
from tests.e2e.workflow.test_order_flow import (
    check_report,
    commit,
    group_order,
    store,
    study_status,
    wait_order,
    wait_study_order,
)
from tests.support.analysis_worker import DIED

ENCAPSULATED = "1.2.840.10008.5.1.4.1.1.104.1"
ENV = {"DICOMWEB_QUEUE_HEARTBEAT_SECONDS": "2", "DICOMWEB_LEASE_SECONDS": "5"}


def restart(server: Server, database_url: str, data: Path) -> Server:
    """kill -9, then the same server again: same data folder, database and port (so the worker's
    URL and every issued token's issuer stay valid)."""
    server.stop("kill")
    port = int(server.url.rsplit(":", 1)[1])
    env = {k: v for k, v in server.env.items() if k.startswith("DICOMWEB_") and k not in STARTED_BY_TESTS}
    return start_server(database_url, data, port=port, **env)


# What start_server sets itself (from its arguments).
STARTED_BY_TESTS = {"DICOMWEB_DATA_DIR", "DICOMWEB_STORAGE_PATH", "DICOMWEB_ISSUER"}


def kinds(changes: int, instances: list[int]) -> dict[str, int]:
    """The events of one order that went through once, its studies stored one instance per
    STOW-RS request (``instances``: how many in each study): each instance and the report's
    one per study stored, each study received by its first request and updated by the others
    (the report's instance counts as no arrival), stable once; the order's ``changes`` status
    moves, its QC and its report."""
    studies = len(instances)
    counts = {
        "instance.stored": sum(instances) + studies,
        "study.received": studies,
        "study.updated": sum(instances) - studies,
        "study.stable": studies,
        "order.created": 1,
        "qc.completed": 1,
        "order.status_changed": changes,
        "report.ready": 1,
    }
    return {kind: n for kind, n in counts.items() if n}


async def check_once(
    db: asyncpg.Pool,
    server: Server,
    done: dict[str, Any],
    changes: int = 4,
    instances: tuple[int, ...] = (2,),
) -> None:
    """One report, one delivered move, each event once, one Encapsulated PDF in each study."""
    order_id = done["order_id"]
    check_report(server, done)  # and one Encapsulated PDF, the worker's, in each study
    assert await db.fetchval("SELECT count(*) FROM report WHERE order_id = $1::uuid", order_id) == 1
    delivered = "SELECT count(*) FROM order_history WHERE order_id = $1::uuid AND status = 'delivered'"
    assert await db.fetchval(delivered, order_id) == 1
    counted = await db.fetch("SELECT kind, count(*) AS n FROM event GROUP BY kind")
    assert {r["kind"]: r["n"] for r in counted} == kinds(changes, list(instances))
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


def pending_order(database_url: str, data: Path) -> tuple[Server, str, str]:
    """A server, and a study of two instances stored there and settled into a pending order."""
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="0.5", **ENV)
    study = generate_uid()
    store(server, study, 2)
    return server, study, wait_study_order(server, study, "pending")


async def test_killed_before_the_study_is_stable(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    data = tmp_path / "s"
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="3", **ENV)
    study = generate_uid()
    store(server, study, 2)
    assert study_status(server, study)["status"] == "unstable"
    server = restart(server, database_url, data)
    worker = start_worker(server.url, "--count", "1")
    done = worker.next_line()
    assert done["studies"] == [study] and done["attempt"] == 1
    await check_once(db, server, done)
    server.stop()


async def test_killed_with_the_order_pending(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    data = tmp_path / "s"
    server, _study, _ = pending_order(database_url, data)
    server = restart(server, database_url, data)
    worker = start_worker(server.url, "--count", "1")
    done = worker.next_line()
    assert done["attempt"] == 1
    await check_once(db, server, done)
    server.stop()


async def test_killed_with_the_job_claimed_and_its_worker_dead(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    data = tmp_path / "s"
    server, _study, order_id = pending_order(database_url, data)
    assert start_worker(server.url, "--die-after", "claim").wait() == DIED
    assert await db.fetchval("SELECT status FROM orders") == "processing"
    server = restart(server, database_url, data)
    claimed = time.monotonic()
    worker = start_worker(server.url, "--count", "1")
    done = worker.next_line()
    assert done["order_id"] == order_id and done["attempt"] == 2
    assert time.monotonic() - claimed < 20
    await check_once(db, server, done, changes=6)
    states = await db.fetch("SELECT attempt, state FROM analysis_job ORDER BY attempt")
    assert [(r["attempt"], r["state"]) for r in states] == [(1, "expired"), (2, "completed")]
    history = await db.fetch("SELECT status FROM order_history ORDER BY pk")
    assert [r["status"] for r in history] == [
        "stable",
        "qc_passed",
        "pending",
        "processing",
        "pending",
        "processing",
        "delivered",
    ]
    server.stop()


# Where the delivery is held when the server is killed: a row lock the test takes after the
# claim.  The study row (FOR UPDATE): ingest cannot index the report's instance in that study
# (its series row references it).  The order row (FOR NO KEY UPDATE, which the completion's
# report row, a key share, does not wait for): the instance is stored, the move to delivered
# waits.
HOLDS = {
    "before_storing": "SELECT 1 FROM study WHERE tenant = 'default' AND study_uid = $1 FOR UPDATE",
    "before_the_move": "SELECT 1 FROM orders o JOIN order_study s ON s.order_id = o.id "
    "WHERE s.study_uid = $1 FOR NO KEY UPDATE OF o",
}


async def wait_claimed(db: asyncpg.Pool) -> None:
    deadline = time.monotonic() + 20
    while await db.fetchval("SELECT count(*) FROM analysis_job") == 0:
        assert time.monotonic() < deadline, "the worker never claimed the order"
        await asyncio.sleep(0.05)


async def wait_blocked(db: asyncpg.Pool, holder: asyncpg.Connection) -> None:
    """Until a server's session waits for the test's lock: the delivery is at that point."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND $1 = ANY(pg_blocking_pids(pid))"
    )
    pid = holder.get_server_pid()
    deadline = time.monotonic() + 20
    while await db.fetchval(query, pid) == 0:
        assert time.monotonic() < deadline, "the delivery never reached the held row"
        await asyncio.sleep(0.05)


async def complete_then_kill(
    server: Server, db: asyncpg.Pool, start_worker: StartWorker, hold: str, study: str
) -> dict[str, Any]:
    """The worker completes while the delivery is held at ``hold``; the server is killed there."""
    worker = start_worker(server.url, "--count", "1", "--work-seconds", "1")
    await wait_claimed(db)
    async with db.acquire() as holder, holder.transaction():
        await holder.execute(HOLDS[hold], study)
        done = worker.next_line()  # the completion is acknowledged
        await wait_blocked(db, holder)
        server.stop("kill")
    assert await db.fetchval("SELECT status FROM orders") == "processing"  # not delivered
    return done


@pytest.mark.parametrize("hold", list(HOLDS))
async def test_killed_after_complete_before_delivery(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker, hold: str
) -> None:
    data = tmp_path / "s"
    server, study, order_id = pending_order(database_url, data)
    done = await complete_then_kill(server, db, start_worker, hold, study)
    stored = "SELECT count(*) FROM instance WHERE sop_class_uid = $1"
    assert await db.fetchval(stored, ENCAPSULATED) == (0 if hold == "before_storing" else 1)
    server = restart(server, database_url, data)
    wait_order(server, order_id, "delivered")
    await check_once(db, server, done)  # a re-sent identical instance adds no event
    server.stop()


async def test_killed_with_the_job_claimed_and_its_worker_running(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The worker keeps working (heart-beating every second) while the server is killed and
    restarted at its URL.  Whether its heartbeat reaches the new server within the 5 s lease
    (attempt 1 completes) or not (the lease runs out, its late heartbeat is refused, it claims
    the order again as attempt 2), the order completes once."""
    data = tmp_path / "s"
    server, _study, order_id = pending_order(database_url, data)
    worker = start_worker(server.url, "--count", "1", "--work-seconds", "6")
    deadline = time.monotonic() + 20
    while await db.fetchval("SELECT count(*) FROM analysis_job") == 0:
        assert time.monotonic() < deadline, "the worker never claimed the order"
        await asyncio.sleep(0.05)
    server = restart(server, database_url, data)
    done = worker.next_line(60)
    assert done["order_id"] == order_id
    await check_once(db, server, done, changes=4 if done["attempt"] == 1 else 6)
    jobs = await db.fetch("SELECT attempt, state FROM analysis_job ORDER BY attempt")
    expected = [(1, "completed")] if done["attempt"] == 1 else [(1, "expired"), (2, "completed")]
    assert [(r["attempt"], r["state"]) for r in jobs] == expected
    assert worker.wait() == 0
    server.stop()


async def test_a_group_order_killed_half_delivered_is_delivered_once_to_each_study(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The delivery stores the report into the first study, then waits on the second: killed
    there, the re-run leaves exactly one Encapsulated PDF in each."""
    data = tmp_path / "s"
    env = {"DICOMWEB_QUIET_SECONDS": "3600", "DICOMWEB_AUTO_ORDERS": "false", **ENV}
    server = start_server(database_url, data, **env)
    studies = [generate_uid(), generate_uid()]
    for study in studies:
        store(server, study, 1)
        commit(server, study, 1)
    group_order(server, studies)
    first = await db.fetchval("SELECT study_uid FROM order_study ORDER BY study_uid LIMIT 1")
    second = next(s for s in studies if s != first)
    done = await complete_then_kill(server, db, start_worker, "before_storing", second)
    in_study = (
        "SELECT i.sop_class_uid FROM instance i JOIN study s ON s.pk = i.study_pk WHERE s.study_uid = $1"
    )
    assert ENCAPSULATED in [r[0] for r in await db.fetch(in_study, first)]  # delivered in order
    assert ENCAPSULATED not in [r[0] for r in await db.fetch(in_study, second)]
    server = restart(server, database_url, data)
    wait_order(server, done["order_id"], "delivered")
    assert sorted(done["studies"]) == sorted(studies)
    await check_once(db, server, done, instances=(1, 1))
    server.stop()
