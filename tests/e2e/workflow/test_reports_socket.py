"""The delivery step through a real server process and pgqueuer: a report completed as the worker
API completes one (objects in the store, the report row and the ``report.deliver`` step queued in
one transaction) is delivered with nobody calling the step: the order becomes ``delivered`` and
the Encapsulated PDF is found by QIDO-RS and read back over the socket."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import asyncpg
import httpx
from pydicom.uid import generate_uid

from dicomweb_server.db import orders, reports
from dicomweb_server.db.pool import transaction
from dicomweb_server.jobs import queue
from dicomweb_server.lifecycle import Action
from dicomweb_server.storage.base import new_key
from dicomweb_server.storage.files import FileStore
from dicomweb_server.workflow import delivery
from tests.conftest import TENANT, start_server
from tests.support.dicomfiles import instance

PDF = b"%PDF-1.4\n% a report\n%%EOF\n"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


async def order_status(db: asyncpg.Pool, order_id: str, wanted: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await db.fetchval("SELECT status FROM orders WHERE id = $1::uuid", order_id) == wanted:
            return
        await asyncio.sleep(0.1)
    now = await db.fetchval("SELECT status FROM orders WHERE id = $1::uuid", order_id)
    raise AssertionError(f"order {order_id} is {now}, not {wanted}")


async def put(store: FileStore, data: bytes) -> reports.StoredObject:
    key = new_key(TENANT)
    writer = store.writer(key)
    await writer.write(data)
    await writer.commit()
    return reports.StoredObject(key, len(data), hashlib.sha256(data).digest())


async def test_a_completed_report_is_delivered_through_the_queue(
    database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path / "a", DICOMWEB_QUIET_SECONDS="0.5")
    study = generate_uid()
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as client:
        for n in range(2):
            r = await client.post(
                "/dicomweb/studies",
                content=instance(study, seed=n),
                headers={"content-type": "application/dicom"},
            )
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while (await db.fetchval("SELECT status FROM orders")) != "pending":
            assert time.monotonic() < deadline, "the order never became pending"
            await asyncio.sleep(0.1)
        order_id: str = await db.fetchval("SELECT id::text FROM orders")
        store = FileStore(tmp_path / "a" / "objects")
        pdf, json = await put(store, PDF), await put(store, b'{"regions": [{"name": "x", "ml": 1}]}')
        async with transaction(db) as conn:  # what the worker API's claim and complete do
            assert await orders.transition(conn, TENANT, order_id, Action.CLAIM, "worker:test") is not None
            job_id = await conn.fetchval(
                "INSERT INTO analysis_job (order_id, tenant, attempt, worker, client_id, state, "
                "lease_expires_at, finished_at) "
                "VALUES ($1::uuid, $2, 1, 'w', 'c', 'completed', now(), now()) RETURNING id::text",
                order_id,
                TENANT,
            )
            report_id, _ = await reports.create(conn, TENANT, order_id, job_id, pdf, json, None)
            payload = {"tenant": TENANT, "report": report_id}
            await queue.enqueue(conn, delivery.DELIVER_STEP, payload, key=delivery.deliver_key(report_id))
        await order_status(db, order_id, "delivered", 20)

        found = await client.get(
            f"/dicomweb/studies/{study}/instances", params={"SOPClassUID": ENCAPSULATED_PDF}
        )
        assert found.status_code == 200 and len(found.json()) == 1
        listed = (await client.get(f"/api/v1/orders/{order_id}/reports")).json()
        [summary] = listed["items"]
        assert summary["instances"][0]["url"].startswith(server.url + "/dicomweb/studies/" + study)
        got = await client.get(summary["links"]["pdf"])
        assert got.status_code == 200 and got.content == PDF
        csv = await client.get(summary["links"]["csv"])
        assert csv.text == "name,ml\r\nx,1\r\n"
    server.stop()
