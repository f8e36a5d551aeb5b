"""The lifecycle through real server processes and pgqueuer: a study stored by STOW-RS becomes
stable by its quiet period, becomes an order and passes QC with nobody calling a step; a
server killed during the quiet period, restarted, still makes the study stable on time; two
server processes on one database run each step exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import httpx
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.support.dicomfiles import instance

STUDIES = "/dicomweb/studies"


def store(server: Server, study: str, count: int = 2) -> None:
    for n in range(count):
        r = httpx.post(
            server.url + STUDIES,
            content=instance(study, seed=n),
            headers={"Content-Type": "application/dicom", **server.headers},
            timeout=30,
        )
        assert r.status_code == 200, r.text


def status(server: Server, study: str) -> dict[str, object]:
    r = httpx.get(f"{server.url}/api/v1/studies/{study}/status", headers=server.headers, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def wait_for(server: Server, study: str, wanted: str, seconds: float) -> float:
    """Seconds until the study shows ``wanted``; fails after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if status(server, study)["status"] == wanted:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"study {study} is {status(server, study)['status']}, not {wanted}")


def test_quiet_period_to_pending_through_the_queue(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "a", DICOMWEB_QUIET_SECONDS="1")
    study = generate_uid()
    store(server, study)
    assert status(server, study)["status"] == "unstable"
    took = wait_for(server, study, "pending", 15)
    assert took >= 0.5  # not before its quiet period
    answer = status(server, study)
    assert answer["instances"] == 2 and answer["stable_by"] == "quiet"
    assert [o["status"] for o in answer["orders"]] == ["pending"]  # type: ignore[index, union-attr]
    server.stop()


async def test_a_restart_during_the_quiet_period_keeps_the_timer(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    env = {"DICOMWEB_QUIET_SECONDS": "4", "DICOMWEB_QUEUE_HEARTBEAT_SECONDS": "2"}
    server = start_server(database_url, tmp_path / "a", **env)
    study = generate_uid()
    store(server, study, 1)
    stored_at = time.monotonic()
    server.stop("kill")  # kill -9: nothing in memory survives
    server = start_server(database_url, tmp_path / "a", **env)  # the same objects folder
    wait_for(server, study, "pending", 30)
    assert time.monotonic() - stored_at >= 3.5
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    server.stop()


async def test_two_processes_run_each_step_once(database_url: str, db: asyncpg.Pool, tmp_path: Path) -> None:
    env = {"DICOMWEB_QUIET_SECONDS": "1"}
    shared = {"DICOMWEB_STORAGE_PATH": str(tmp_path / "objects"), **env}  # one store, as one deployment
    servers = [start_server(database_url, tmp_path / name, **shared) for name in ("a", "b")]
    studies = [generate_uid() for _ in range(20)]
    for i, study in enumerate(studies):
        store(servers[i % 2], study, 1)
    for study in studies:
        wait_for(servers[0], study, "pending", 30)
    assert await db.fetchval("SELECT count(*) FROM orders") == len(studies)
    per_order = await db.fetch("SELECT order_id, count(*) AS n FROM order_history GROUP BY order_id")
    assert {r["n"] for r in per_order} == {3}  # stable, qc_passed, pending: once each
    kinds = await db.fetch(
        "SELECT kind, count(*) AS n FROM event WHERE kind <> 'instance.stored' GROUP BY kind"
    )
    assert {r["kind"]: r["n"] for r in kinds} == {
        "study.received": 20,
        "study.stable": 20,
        "order.created": 20,
        "qc.completed": 20,
        "order.status_changed": 40,
    }
    for server in servers:
        server.stop()
