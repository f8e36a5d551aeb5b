"""kill -9 of the server at each step of an order, a restart on the same data folder, database
and port, and the order completes exactly once (issue #12 "Tests"; README, "Background work"):
one report row, one ``delivered`` history row, each event once, one Encapsulated PDF instance.

The steps: the study stored and not yet stable (its settle step survives in PostgreSQL); the
order pending (a worker claims it from the restarted server); the job claimed, the worker
process dying with it (the 5 s lease runs out, the order goes back to pending, the next claim
completes it as attempt 2); the completion acknowledged and the delivery not yet run (the
``report.deliver`` step, committed with the report, runs after the restart: the order is
delivered once, with one instance).  ``DICOMWEB_QUEUE_HEARTBEAT_SECONDS=2``: a step whose
process died is taken again within seconds."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import asyncpg
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.e2e.workflow.conftest import StartWorker
from tests.e2e.workflow.test_order_flow import (
    check_report,
    encapsulated_pdfs,
    store,
    study_status,
    wait_order,
    wait_study_order,
)
from tests.support.analysis_worker import DIED

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


def kinds(changes: int, instances: int) -> dict[str, int]:
    """The events of one single-study order that went through once: its instances and the
    report's one, the study's arrival, the order's ``changes`` status moves, QC and the report."""
    return {
        "instance.stored": instances + 1,
        "study.received": 1,
        "study.stable": 1,
        "order.created": 1,
        "qc.completed": 1,
        "order.status_changed": changes,
        "report.ready": 1,
        "study.updated": 1,  # the report's instance added to the study
    }


async def check_once(
    db: asyncpg.Pool, server: Server, done: dict[str, Any], changes: int = 4, instances: int = 2
) -> None:
    """One report, one delivered move, each event once, one Encapsulated PDF in the study."""
    order_id = done["order_id"]
    check_report(server, done)
    assert await db.fetchval("SELECT count(*) FROM report WHERE order_id = $1::uuid", order_id) == 1
    delivered = "SELECT count(*) FROM order_history WHERE order_id = $1::uuid AND status = 'delivered'"
    assert await db.fetchval(delivered, order_id) == 1
    counted = await db.fetch("SELECT kind, count(*) AS n FROM event GROUP BY kind")
    assert {r["kind"]: r["n"] for r in counted} == kinds(changes, instances)
    [study] = done["studies"]
    assert encapsulated_pdfs(server, study) == [base64.b64decode(done["pdf"])]
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


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
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="0.5", **ENV)
    study = generate_uid()
    store(server, study, 2)
    wait_study_order(server, study, "pending")
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
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="0.5", **ENV)
    study = generate_uid()
    store(server, study, 2)
    order_id = wait_study_order(server, study, "pending")
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


async def test_killed_after_complete_before_delivery(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    data = tmp_path / "s"
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="0.5", **ENV)
    study = generate_uid()
    store(server, study, 2)
    order_id = wait_study_order(server, study, "pending")
    # An 8 MiB PDF (under the 16 MiB header budget): its delivery (read back, wrapped, parsed,
    # stored through ingest) outlasts the kill.
    worker = start_worker(server.url, "--count", "1", "--pdf-pad", str(8 * 1024 * 1024))
    done = worker.next_line()
    server.stop("kill")  # as soon as the completion is acknowledged
    assert await db.fetchval("SELECT status FROM orders") == "processing"  # not delivered yet
    # The kill lands before the report's instance is stored, or after it and before the move;
    # either way the step runs again after the restart, and a re-sent instance adds nothing.
    stored = "SELECT count(*) FROM instance WHERE sop_class_uid = $1"
    assert await db.fetchval(stored, ENCAPSULATED) in (0, 1)
    server = restart(server, database_url, data)
    wait_order(server, order_id, "delivered")
    await check_once(db, server, done)
    server.stop()


ENCAPSULATED = "1.2.840.10008.5.1.4.1.1.104.1"


async def test_killed_with_the_job_claimed_and_its_worker_running(
    database_url: str, db: asyncpg.Pool, tmp_path: Path, start_worker: StartWorker
) -> None:
    """The worker keeps working (heart-beating every second) while the server is killed and
    restarted at its URL.  Whether its heartbeat reaches the new server within the 5 s lease
    (attempt 1 completes) or not (the lease runs out, its late heartbeat is refused, it claims
    the order again as attempt 2), the order completes once."""
    data = tmp_path / "s"
    server = start_server(database_url, data, DICOMWEB_QUIET_SECONDS="0.5", **ENV)
    study = generate_uid()
    store(server, study, 2)
    order_id = wait_study_order(server, study, "pending")
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
