"""The analysis workers' API over the real app (ASGI, its queue consumer running): claim,
heartbeat, complete, fail, lease expiry, and what the job token can and cannot read.

Pending orders are made the real way: instances ingested, the study committed, QC run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dicomweb_server import events
from dicomweb_server.access import auth
from dicomweb_server.db import access as access_db
from dicomweb_server.ingest.origin import STOW_RS, Origin
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.settings import IngestSettings
from dicomweb_server.workflow import analysis, qc, stability
from tests.conftest import ANALYSIS_CLIENT, TENANT, App, bearer, make_settings, running_app, token_for
from tests.support.dicomfiles import instance

OTHER_ANALYSIS = "test-analysis-2"
ROOT_UID = "1.2.826.0.1.3680043.8.498.7"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def study_uid(n: int) -> str:
    return f"{ROOT_UID}.{n}"


async def ensure_analysis_clients(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await access_db.create_tenant(conn, auth.ANALYSIS_TENANT, "analysis")
        if await access_db.find_client(conn, OTHER_ANALYSIS) is None:
            hashed = auth.hash_secret("unused")
            await access_db.create_client(
                conn, OTHER_ANALYSIS, auth.ANALYSIS_TENANT, OTHER_ANALYSIS, [auth.ANALYSIS_SCOPE], hashed
            )


def worker_headers(client: str = ANALYSIS_CLIENT) -> dict[str, str]:
    return bearer(token_for(client_id=client, tenant=auth.ANALYSIS_TENANT, scopes=(auth.ANALYSIS_SCOPE,)))


async def start(database_url: str, tmp: Path, **workflow: Any) -> AsyncIterator[App]:
    fields = {"quiet_seconds": 3600.0, **workflow}  # studies become stable by commit only
    async with running_app(make_settings(database_url, tmp / "objects", workflow=fields)) as a:
        await ensure_analysis_clients(a.state.pool)  # type: ignore[attr-defined]
        yield a


@pytest.fixture
async def server(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    async for a in start(database_url, tmp_path, max_attempts=2):
        yield a


async def make_pending(a: App, *studies: int) -> list[str]:
    """One pending order per study, each through ingest, commit and QC; their ids in order."""
    state: Any = a.state
    workflow = a.settings.workflow
    async with IngestSession(
        Origin(STOW_RS, "test"), TENANT, None, IngestSettings(), state.store, state.pool, workflow
    ) as s:
        for n in studies:
            s.begin_part()
            await s.feed(instance(study_uid(n), f"{study_uid(n)}.1", f"{study_uid(n)}.1.1", seed=n))
            await s.end_part()
        await s.finish()
    ids = []
    for n in studies:
        assert (await stability.commit(state.pool, workflow, TENANT, study_uid(n), 1, 1, "test")).stable
        order_id = await state.pool.fetchval(
            "SELECT order_id::text FROM order_study WHERE study_uid = $1", study_uid(n)
        )
        await qc.run(state.pool, state.store, {"tenant": TENANT, "order": order_id})
        ids.append(order_id)
    statuses = await state.pool.fetch("SELECT status FROM orders WHERE id = ANY($1::uuid[])", ids)
    assert {r["status"] for r in statuses} == {"pending"}
    return ids


async def claim(a: App, worker: str = "w1", client: str = ANALYSIS_CLIENT, wait: float = 2) -> httpx.Response:
    # A short wait by default: the app's own QC step (queued with the order) may still hold the
    # order's row for a moment after make_pending ran QC itself, and a claim skips locked rows.
    return await a.client.post(
        "/api/v1/jobs/claim", json={"worker": worker, "wait": wait}, headers=worker_headers(client)
    )


async def order(a: App, order_id: str) -> tuple[str, str | None, int]:
    row = await a.state.pool.fetchrow(  # type: ignore[attr-defined]
        "SELECT status, reason, attempts FROM orders WHERE id = $1::uuid", order_id
    )
    return row["status"], row["reason"], row["attempts"]


def report_files(csv: bool = True) -> dict[str, tuple[str, bytes, str]]:
    files = {
        "pdf": ("report.pdf", PDF, "application/pdf"),
        "json": ("result.json", b'{"volume_ml": 1234.5}', "application/json"),
    }
    if csv:
        files["csv"] = ("regions.csv", b"region,volume\nhippocampus,3.2\n", "text/csv")
    return files


async def test_no_pending_order_answers_204_after_waiting(server: App) -> None:
    started = time.monotonic()
    r = await claim(server, wait=0.5)
    assert r.status_code == 204 and r.content == b""
    assert time.monotonic() - started >= 0.45


async def test_long_poll_returns_as_soon_as_an_order_is_pending(server: App) -> None:
    waiting = asyncio.ensure_future(claim(server, wait=10))
    await asyncio.sleep(0.3)
    [order_id] = await make_pending(server, 1)
    r = await waiting
    assert r.status_code == 200 and r.json()["order_id"] == order_id


async def test_claim_heartbeat_complete(server: App) -> None:
    state: Any = server.state
    [order_id] = await make_pending(server, 1)
    r = await claim(server)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["order_id"] == order_id and job["attempt"] == 1 and job["priority"] == "routine"
    assert job["token_type"] == "Bearer" and job["lease_expires_at"].endswith("Z")
    assert job["studies"] == [
        {
            "study_uid": study_uid(1),
            "url": f"http://testserver/dicomweb/studies/{study_uid(1)}",
            "metadata_url": f"http://testserver/dicomweb/studies/{study_uid(1)}/metadata",
        }
    ]
    assert await order(server, order_id) == ("processing", None, 1)
    expire = await state.pool.fetchval(
        "SELECT count(*) FROM pgqueuer WHERE dedupe_key = $1", f"job.expire:{job['id']}"
    )
    assert expire == 1

    beat = await server.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", headers=worker_headers())
    assert beat.status_code == 200, beat.text
    assert beat.json()["lease_expires_at"] >= job["lease_expires_at"] and beat.json()["access_token"]

    done = await server.client.post(
        f"/api/v1/jobs/{job['id']}/complete", files=report_files(), headers=worker_headers()
    )
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["job_id"] == job["id"] and answer["order_id"] == order_id
    assert answer["status"] == "completed"
    assert await order(server, order_id) == ("processing", None, 1)  # the deliveries come next
    report = await state.pool.fetchrow("SELECT * FROM report WHERE id = $1::uuid", answer["report_id"])
    assert report["job_id"].hex == job["id"].replace("-", "") and report["pdf_size"] == len(PDF)
    assert report["pdf_key"].startswith(f"{TENANT}/") and report["csv_key"] is not None
    stored = b"".join([chunk async for chunk in state.store.read(report["pdf_key"])])
    assert stored == PDF
    import hashlib

    assert bytes(report["pdf_sha256"]) == hashlib.sha256(PDF).digest()
    assert await state.pool.fetchval("SELECT state FROM analysis_job") == "completed"
    async with state.pool.acquire() as conn:
        ready = [e for e in await events.read(conn, 0, 1000) if e.kind == events.REPORT_READY]
    assert [e.payload for e in ready] == [{"order_id": order_id, "report_id": answer["report_id"]}]
    queued = await state.pool.fetch(
        "SELECT payload FROM pgqueuer WHERE entrypoint = 'report.deliver' AND dedupe_key = $1",
        f"report.deliver:{answer['report_id']}",
    )
    assert len(queued) == 1

    for _ in range(100):  # the app's delivery step stores the Encapsulated PDF: let it finish
        if (await order(server, order_id))[0] == "delivered":
            break
        await asyncio.sleep(0.1)
    objects = [o async for o in state.store.objects()]
    again = await server.client.post(
        f"/api/v1/jobs/{job['id']}/complete", files=report_files(), headers=worker_headers()
    )
    assert again.status_code == 200 and again.json() == answer
    assert len([o async for o in state.store.objects()]) == len(objects)
    assert await state.pool.fetchval("SELECT count(*) FROM report") == 1

    lost = await server.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", headers=worker_headers())
    assert lost.status_code == 409
    assert lost.headers["content-type"].startswith("application/problem+json")
    assert lost.json()["job_state"] == "completed"


async def test_complete_checks_its_parts(server: App) -> None:
    await make_pending(server, 1)
    job = (await claim(server)).json()
    url = f"/api/v1/jobs/{job['id']}/complete"
    files = report_files(csv=False)
    bad_pdf = {**files, "pdf": ("r.pdf", b"not a pdf", "application/pdf")}
    bad_json = {**files, "json": ("r.json", b"[1, 2]", "application/json")}
    for wrong in (bad_pdf, bad_json, {"json": files["json"]}):
        r = await server.client.post(url, files=wrong, headers=worker_headers())
        assert r.status_code == 400, r.text
    r = await server.client.post(url, json={"pdf": "x"}, headers=worker_headers())
    assert r.status_code == 415
    assert await server.state.pool.fetchval("SELECT count(*) FROM report") == 0  # type: ignore[attr-defined]
    ok = await server.client.post(url, files=files, headers=worker_headers())
    assert ok.status_code == 200, ok.text


async def test_only_the_claiming_client_touches_the_job(server: App) -> None:
    await make_pending(server, 1)
    job = (await claim(server)).json()
    other = worker_headers(OTHER_ANALYSIS)
    for action in ("heartbeat", "fail"):
        r = await server.client.post(
            f"/api/v1/jobs/{job['id']}/{action}", json={"reason": "x"}, headers=other
        )
        assert r.status_code == 404
    r = await server.client.post(f"/api/v1/jobs/{job['id']}/complete", files=report_files(), headers=other)
    assert r.status_code == 404
    unknown = await server.client.post("/api/v1/jobs/not-a-uuid/heartbeat", headers=worker_headers())
    assert unknown.status_code == 404


async def test_fail_retryable_then_not(server: App) -> None:
    [order_id] = await make_pending(server, 1)
    job = (await claim(server)).json()
    r = await server.client.post(
        f"/api/v1/jobs/{job['id']}/fail",
        json={"reason": "GPU lost", "retryable": True},
        headers=worker_headers(),
    )
    assert r.status_code == 200 and r.json()["order_status"] == "pending"
    assert await order(server, order_id) == ("pending", None, 1)
    again = await server.client.post(
        f"/api/v1/jobs/{job['id']}/fail", json={"reason": "x"}, headers=worker_headers()
    )
    assert again.status_code == 409
    job = (await claim(server)).json()
    assert job["attempt"] == 2
    r = await server.client.post(
        f"/api/v1/jobs/{job['id']}/fail",
        json={"reason": "not a brain", "retryable": False},
        headers=worker_headers(),
    )
    assert r.json()["order_status"] == "failed"
    assert await order(server, order_id) == ("failed", "analysis", 2)


async def test_retryable_failure_fails_the_order_at_the_attempt_limit(server: App) -> None:
    [order_id] = await make_pending(server, 1)
    for attempt in (1, 2):  # max_attempts = 2
        job = (await claim(server)).json()
        assert job["attempt"] == attempt
        r = await server.client.post(
            f"/api/v1/jobs/{job['id']}/fail",
            json={"reason": "timeout", "retryable": True},
            headers=worker_headers(),
        )
        assert r.status_code == 200
    assert await order(server, order_id) == ("failed", "analysis", 2)
    assert (await claim(server, wait=0.5)).status_code == 204


async def test_lease_expiry_releases_then_fails_at_the_limit(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """The queued job.expire step, run by the app's consumer when the 1 s lease ends."""
    async for a in start(database_url, tmp_path, lease_seconds=1.0, max_attempts=2):
        [order_id] = await make_pending(a, 1)
        job = (await claim(a)).json()
        await wait_for(a, order_id, "pending")
        assert (
            await a.state.pool.fetchval("SELECT state FROM analysis_job WHERE id = $1::uuid", job["id"])
            == "expired"
        )  # type: ignore[attr-defined]
        late = await a.client.post(
            f"/api/v1/jobs/{job['id']}/complete", files=report_files(), headers=worker_headers()
        )
        assert late.status_code == 409 and late.json()["job_state"] == "expired"
        second = (await claim(a)).json()
        assert second["attempt"] == 2
        await wait_for(a, order_id, "failed")
        assert await order(a, order_id) == ("failed", "analysis", 2)


async def wait_for(a: App, order_id: str, status: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while (await order(a, order_id))[0] != status:
        assert time.monotonic() < deadline, f"order never became {status}"
        await asyncio.sleep(0.1)


async def test_expire_step_waits_for_a_heartbeat_extended_lease(server: App) -> None:
    state: Any = server.state
    [order_id] = await make_pending(server, 1)
    job = (await claim(server)).json()
    from dicomweb_server.jobs.queue import Later

    with pytest.raises(Later) as later:
        await analysis.expire(state.pool, server.settings.workflow, {"tenant": TENANT, "job": job["id"]})
    assert 250 < later.value.seconds <= 300
    assert await order(server, order_id) == ("processing", None, 1)


async def test_urgent_before_routine_then_oldest(server: App) -> None:
    first, second, third = await make_pending(server, 1, 2, 3)
    await server.state.pool.execute("UPDATE orders SET priority = 'urgent' WHERE id = $1::uuid", third)  # type: ignore[attr-defined]
    got = [(await claim(server)).json()["order_id"] for _ in range(3)]
    assert got == [third, first, second]


async def test_hospital_client_cannot_claim(server: App) -> None:
    await make_pending(server, 1)
    r = await server.client.post("/api/v1/jobs/claim", json={"worker": "w"})  # tenant default, every scope
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    outside = bearer(token_for(client_id="test-client", tenant=auth.ANALYSIS_TENANT, scopes=("analysis",)))
    assert (
        await server.client.post("/api/v1/jobs/claim", json={"worker": "w"}, headers=outside)
    ).status_code == 401


async def test_job_token_reads_its_study_only(server: App) -> None:
    await make_pending(server, 1, 2)
    job = (await claim(server)).json()
    mine = job["studies"][0]["study_uid"]
    other = study_uid(2) if mine == study_uid(1) else study_uid(1)
    token = bearer(job["access_token"])
    r = await server.client.get(f"/dicomweb/studies/{mine}/metadata", headers=token)
    assert r.status_code == 200 and len(r.json()) == 1
    assert (await server.client.get(f"/dicomweb/studies/{mine}/series", headers=token)).status_code == 200
    assert (await server.client.get(f"/dicomweb/studies/{other}/metadata", headers=token)).status_code == 403
    assert (await server.client.get("/dicomweb/studies", headers=token)).status_code == 403
    assert (await server.client.delete(f"/dicomweb/studies/{mine}", headers=token)).status_code == 403
    claim_with_job_token = await server.client.post("/api/v1/jobs/claim", json={"worker": "w"}, headers=token)
    assert claim_with_job_token.status_code == 403
    own = worker_headers()  # the analysis client's own token reads no tenant's data
    assert (await server.client.get(f"/dicomweb/studies/{mine}/metadata", headers=own)).status_code == 403
    assert (await server.client.get("/dicomweb/studies", headers=own)).status_code == 403


async def test_two_workers_racing_for_200_jobs(server: App) -> None:
    ids = await make_pending(server, *range(1, 201))

    async def work(name: str) -> list[str]:
        got = []
        while True:
            r = await claim(server, worker=name)
            if r.status_code == 204:
                return got
            assert r.status_code == 200, r.text
            got.append(r.json()["order_id"])

    a, b = await asyncio.gather(work("a"), work("b"))
    assert len(a) + len(b) == 200 and set(a) | set(b) == set(ids) and not set(a) & set(b)
    assert await server.state.pool.fetchval("SELECT count(DISTINCT order_id) FROM analysis_job") == 200  # type: ignore[attr-defined]


async def test_reconciler_queues_the_expiry_of_a_lapsed_claim_without_its_step(server: App) -> None:
    from dicomweb_server.jobs.runner import Parts
    from dicomweb_server.workflow import jobs

    state: Any = server.state
    await make_pending(server, 1)
    job = (await claim(server)).json()
    key = f"job.expire:{job['id']}"
    await state.pool.execute("DELETE FROM pgqueuer WHERE dedupe_key = $1", key)  # the step is lost
    await state.pool.execute("UPDATE analysis_job SET lease_expires_at = now() - interval '1 minute'")
    await jobs.reconcile(Parts(server.settings, state.pool, state.store))
    deadline = time.monotonic() + 20
    while await state.pool.fetchval("SELECT state FROM analysis_job") != "expired":
        assert time.monotonic() < deadline, "the reconciler's expiry step never ran"
        await asyncio.sleep(0.1)
