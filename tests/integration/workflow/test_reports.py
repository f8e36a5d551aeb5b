"""Reports (issue #12 §4) against the real PostgreSQL, the files store and the app over ASGI: the
``report.deliver`` step stores the Encapsulated PDF back into the study (found by QIDO-RS,
returned by WADO-RS) and moves the order, idempotently; the read API negotiates the formats;
the reconciler queues a lost delivery again.  The report is made as the worker API's
``complete`` makes it: a real order moved to processing by a claim, objects in the store, a
report row."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import asyncpg
import orjson
import pydicom

from dicomweb_server.db import orders, reports
from dicomweb_server.db.pool import transaction
from dicomweb_server.dicom import encapsulated
from dicomweb_server.ingest.origin import STOW_RS, Origin
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.jobs.runner import Parts
from dicomweb_server.lifecycle import Action
from dicomweb_server.settings import IngestSettings, WorkflowSettings
from dicomweb_server.storage.base import ObjectStore, new_key
from dicomweb_server.workflow import delivery, qc, stability
from dicomweb_server.workflow import jobs as workflow_jobs
from dicomweb_server.workflow.report_csv import from_json
from tests.conftest import OTHER_CLIENT, OTHER_TENANT, TENANT, App, bearer, token_for
from tests.support.dicomfiles import instance, split_multipart

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.80", "1.2.826.0.1.3680043.8.498.81"
QUIET = WorkflowSettings(quiet_seconds=0.0)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
RESULT: dict[str, Any] = {"version": "1.0", "regions": [{"name": "hippocampus", "volume_ml": 3.9}]}


async def ingest(store: ObjectStore, pool: asyncpg.Pool, *sops: int, sop_uid: str | None = None) -> None:
    async with IngestSession(
        Origin(STOW_RS, "test"), TENANT, None, IngestSettings(), store, pool, QUIET
    ) as s:
        for n in sops:
            s.begin_part()
            await s.feed(instance(STUDY, SERIES, sop_uid or f"{SERIES}.{n}", seed=n, patient="Doe^Jane"))
            await s.end_part()
        await s.finish()


async def processing_order(app: App) -> str:
    """A real order through stability and QC to pending, then claimed (processing)."""
    pool, store = app.state.pool, app.state.store  # type: ignore[attr-defined]
    await ingest(store, pool, 1, 2)
    await stability.settle(pool, QUIET, {"tenant": TENANT, "study": STUDY})
    order_id: str = await pool.fetchval("SELECT id::text FROM orders")
    await qc.run(pool, store, {"tenant": TENANT, "order": order_id})
    async with transaction(pool) as conn:
        assert await orders.transition(conn, TENANT, order_id, Action.CLAIM, "worker:test") is not None
    return order_id


async def put(store: ObjectStore, data: bytes) -> reports.StoredObject:
    key = new_key(TENANT)
    writer = store.writer(key)
    await writer.write(data)
    await writer.commit()
    return reports.StoredObject(key, len(data), hashlib.sha256(data).digest())


async def make_report(app: App, order_id: str, *, csv: bytes | None = None, result: Any = None) -> str:
    pool, store = app.state.pool, app.state.store  # type: ignore[attr-defined]
    job_id = await pool.fetchval(
        "INSERT INTO analysis_job (order_id, tenant, attempt, worker, client_id, state, lease_expires_at, "
        "finished_at) VALUES ($1::uuid, $2, 1, 'w', 'c', 'completed', now(), now()) RETURNING id::text",
        order_id,
        TENANT,
    )
    pdf = await put(store, PDF)
    json = await put(store, orjson.dumps(RESULT if result is None else result))
    table = await put(store, csv) if csv is not None else None
    async with transaction(pool) as conn:
        report_id, _ = await reports.create(conn, TENANT, order_id, job_id, pdf, json, table)
    return report_id


async def run_delivery(app: App, report_id: str) -> None:
    state = app.state
    payload = {"tenant": TENANT, "report": report_id}
    await delivery.deliver(state.pool, state.store, app.settings, payload)  # type: ignore[attr-defined]


async def test_delivery_stores_the_pdf_instance_and_delivers_the_order(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    pool = app.state.pool  # type: ignore[attr-defined]
    arrival_before = await pool.fetchrow("SELECT instances, state, open_sessions FROM arrival")
    await run_delivery(app, report_id)
    assert await pool.fetchval("SELECT status FROM orders") == "delivered"
    history = await pool.fetch("SELECT status, actor FROM order_history ORDER BY pk")
    assert (history[-1]["status"], history[-1]["actor"]) == ("delivered", delivery.ACTOR)
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM event ORDER BY id")]
    assert kinds[-2:] == ["instance.stored", "order.status_changed"]
    assert "study.updated" not in kinds  # our own report does not reopen the study
    assert await pool.fetchrow("SELECT instances, state, open_sessions FROM arrival") == arrival_before

    found = await app.client.get(
        f"/dicomweb/studies/{STUDY}/instances", params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}
    )
    assert found.status_code == 200, found.text
    [item] = found.json()
    sop = item["00080018"]["Value"][0]
    series = item["0020000E"]["Value"][0]
    assert (series, sop) == encapsulated.uids(report_id, STUDY)
    got = await app.client.get(
        f"/dicomweb/studies/{STUDY}/series/{series}/instances/{sop}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
    )
    assert got.status_code == 200
    [(_, part)] = split_multipart(got.content, got.headers["content-type"])
    ds = pydicom.dcmread(io.BytesIO(part))
    assert encapsulated.pdf_of(ds) == PDF
    assert str(ds.PatientName) == "Doe^Jane" and ds.Modality == "DOC"

    async with pool.acquire() as conn:
        row = await reports.get(conn, TENANT, report_id)
    assert row is not None
    assert row["instances"] == [
        {
            "study_uid": STUDY,
            "series_uid": series,
            "sop_uid": sop,
            "url": f"/dicomweb/studies/{STUDY}/series/{series}/instances/{sop}",
        }
    ]


async def test_running_the_step_twice_changes_nothing(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    pool = app.state.pool  # type: ignore[attr-defined]
    await run_delivery(app, report_id)
    events = await pool.fetchval("SELECT count(*) FROM event")
    await run_delivery(app, report_id)  # the order is delivered: nothing to do
    # Died after storing, before the move: the step runs with the order still processing.
    await pool.execute("UPDATE orders SET status = 'processing'")
    await run_delivery(app, report_id)
    assert await pool.fetchval("SELECT count(*) FROM instance WHERE sop_class_uid LIKE '%.104.1'") == 1
    assert await pool.fetchval("SELECT count(*) FROM instance") == 3
    assert await pool.fetchval("SELECT count(*) FROM event WHERE kind = 'instance.stored'") == 3
    assert await pool.fetchval("SELECT count(*) FROM event") == events + 1  # only the second move's event
    assert await pool.fetchval("SELECT status FROM orders") == "delivered"


async def test_a_failed_store_fails_the_delivery_with_its_comment(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    pool, store = app.state.pool, app.state.store  # type: ignore[attr-defined]
    _, taken = encapsulated.uids(report_id, STUDY)
    await ingest(store, pool, 9, sop_uid=taken)  # another instance already holds the report's UID
    await run_delivery(app, report_id)
    row = await pool.fetchrow("SELECT status, reason FROM orders")
    assert (row["status"], row["reason"]) == ("failed", "delivery")
    last = await pool.fetchrow("SELECT status, reason FROM order_history ORDER BY pk DESC LIMIT 1")
    assert last["status"] == "failed" and last["reason"].startswith(f"study {STUDY}: ")


async def test_reconciler_queues_a_lost_delivery(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    state = app.state
    pool = state.pool  # type: ignore[attr-defined]
    await pool.execute("UPDATE report SET created_at = now() - interval '1 minute'")
    await pool.execute("DELETE FROM pgqueuer")
    parts = Parts(app.settings, pool, state.store)  # type: ignore[attr-defined]
    await workflow_jobs.reconcile(parts)
    keys = [r["dedupe_key"] for r in await pool.fetch("SELECT dedupe_key FROM pgqueuer")]
    assert keys == [delivery.deliver_key(report_id)]
    await run_delivery(app, report_id)
    await pool.execute("DELETE FROM pgqueuer")
    await workflow_jobs.reconcile(parts)
    assert await pool.fetchval("SELECT count(*) FROM pgqueuer") == 0  # delivered: nothing due


async def test_order_reports_and_negotiation(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    await run_delivery(app, report_id)
    listed = await app.client.get(f"/api/v1/orders/{order_id}/reports")
    assert listed.status_code == 200
    body = listed.json()
    assert body["next_cursor"] is None
    [summary] = body["items"]
    own = f"http://testserver/api/v1/orders/{order_id}/reports/{report_id}"
    assert summary["id"] == report_id and summary["order_id"] == order_id
    assert summary["created_at"].endswith("Z")
    assert summary["formats"] == ["application/pdf", "application/json", "text/csv"]
    assert summary["links"]["self"] == own
    assert summary["links"]["pdf"] == own + "?accept=application%2Fpdf"
    [inst] = summary["instances"]
    assert inst["url"].startswith("http://testserver/dicomweb/studies/")

    default = await app.client.get(own, headers={"accept": "*/*"})
    assert default.headers["content-type"].startswith("application/json")
    assert default.json() == RESULT
    pdf = await app.client.get(own, headers={"accept": "application/pdf"})
    assert pdf.status_code == 200 and pdf.content == PDF
    assert pdf.headers["content-type"] == "application/pdf"
    assert (await app.client.get(summary["links"]["pdf"])).content == PDF
    made = await app.client.get(own, headers={"accept": "text/csv"})
    assert made.status_code == 200 and made.headers["content-type"].startswith("text/csv")
    assert made.text == from_json(RESULT) == "name,volume_ml\r\nhippocampus,3.9\r\n"
    refused = await app.client.get(own, headers={"accept": "image/png"})
    assert refused.status_code == 406
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_a_stored_csv_is_served_as_is(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id, csv=b"a;b\n1;2\n")
    got = await app.client.get(f"/api/v1/orders/{order_id}/reports/{report_id}?accept=text/csv")
    assert got.status_code == 200 and got.content == b"a;b\n1;2\n"


async def test_another_tenants_reports_are_not_found(app: App) -> None:
    order_id = await processing_order(app)
    report_id = await make_report(app, order_id)
    other = bearer(token_for(client_id=OTHER_CLIENT, tenant=OTHER_TENANT))
    for path in (f"/api/v1/orders/{order_id}/reports", f"/api/v1/orders/{order_id}/reports/{report_id}"):
        got = await app.client.get(path, headers=other)
        assert got.status_code == 404, path
        assert got.headers["content-type"].startswith("application/problem+json")
    listed = await app.client.get("/api/v1/reports", headers=other)
    assert listed.json() == {"items": [], "next_cursor": None}
    assert (await app.client.get(f"/api/v1/orders/{order_id}/reports/not-a-uuid")).status_code == 404
    wrong = "00000000-0000-0000-0000-000000000000"
    assert (await app.client.get(f"/api/v1/orders/{wrong}/reports/{report_id}")).status_code == 404


async def test_all_reports_oldest_first_in_pages(app: App) -> None:
    order_id = await processing_order(app)
    made = [await make_report(app, order_id) for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        got = await app.client.get("/api/v1/reports", params=params)
        assert got.status_code == 200, got.text
        body = got.json()
        seen += [r["id"] for r in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made and pages == 3
    pool = app.state.pool  # type: ignore[attr-defined]
    second = await pool.fetchval("SELECT created_at FROM report WHERE id = $1::uuid", made[1])
    after = await app.client.get("/api/v1/reports", params={"created_after": second.isoformat()})
    assert [r["id"] for r in after.json()["items"]] == made[2:]
    assert (await app.client.get("/api/v1/reports", params={"cursor": "junk"})).status_code == 400
    assert (await app.client.get("/api/v1/reports", params={"created_after": "yesterday"})).status_code == 400
