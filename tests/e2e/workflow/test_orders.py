"""The orders API (issue #12 §2) over the app, with its job runner on: studies arrive by
STOW-RS and are committed, orders are created, listed, read, cancelled, retried and have a
failed QC overridden; the queued QC step runs as the server runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dicomweb_server.workflow import qc
from tests.conftest import OTHER_CLIENT, OTHER_TENANT, TENANT, App, bearer, token_for
from tests.support.dicomfiles import content_type, instance, multipart

ORDERS = "/api/v1/orders"
S1, S2, S3 = "1.2.826.0.1.3680043.8.498.601", "1.2.826.0.1.3680043.8.498.602", "1.2.826.0.1.3680043.8.498.603"
OTHER = bearer(token_for(client_id=OTHER_CLIENT, tenant=OTHER_TENANT))


@pytest.fixture
async def api(app: App) -> AsyncIterator[App]:
    """The app with automatic orders off for the test tenants: every order here is the API's."""
    pool = app.state.pool  # type: ignore[attr-defined]
    await pool.execute(
        "UPDATE tenant SET auto_orders = false WHERE id = ANY($1::text[])", [TENANT, OTHER_TENANT]
    )
    try:
        yield app
    finally:
        await pool.execute(
            "UPDATE tenant SET auto_orders = NULL WHERE id = ANY($1::text[])", [TENANT, OTHER_TENANT]
        )


async def store(app: App, study: str, n: int = 1, patient: str = "PID-1", commit: bool = True) -> None:
    series = study + ".1"
    files = [instance(study, series, f"{series}.{i}", seed=i, PatientID=patient) for i in range(n)]
    r = await app.client.post(
        "/dicomweb/studies", content=multipart(files), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200, r.text
    if commit:
        r = await app.client.post(f"/api/v1/studies/{study}/commit", json={"expected_instances": n})
        assert r.status_code == 200 and r.json()["status"] == "stable", r.text


async def order(app: App, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = await app.client.post(ORDERS, json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def reaches(app: App, order_id: str, status: str) -> dict[str, Any]:
    """The order once the background steps moved it to ``status``."""
    for _ in range(200):
        r = await app.client.get(f"{ORDERS}/{order_id}")
        assert r.status_code == 200, r.text
        if r.json()["status"] == status:
            return dict(r.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"order {order_id} stayed {r.json()['status']}, never {status}")


async def test_create_replay_and_key_reuse(api: App) -> None:
    await store(api, S1)
    r = await api.client.post(ORDERS, json={"studies": [S1], "note": "n"}, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert r.headers["location"] == first["links"]["self"] == f"http://testserver{ORDERS}/{first['id']}"
    assert first["source"] == "api" and first["priority"] == "routine" and first["note"] == "n"
    assert [s["study_uid"] for s in first["studies"]] == [S1]
    replay = await api.client.post(
        ORDERS, json={"note": "n", "priority": "routine", "studies": [S1]}, headers={"Idempotency-Key": "k-1"}
    )
    assert replay.status_code == 200 and replay.json()["id"] == first["id"]
    reused = await api.client.post(
        ORDERS, json={"studies": [S1], "priority": "urgent"}, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 422
    assert reused.headers["content-type"].startswith("application/problem+json")
    assert reused.json()["order_id"] == first["id"]
    without_key = await order(api, {"studies": [S1], "note": "n"})
    assert without_key["id"] != first["id"]
    pool = api.state.pool  # type: ignore[attr-defined]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE idempotency_key = 'k-1'") == 1
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM event WHERE kind = 'order.created'")]
    assert len(kinds) == 2


async def test_concurrent_requests_with_one_key_make_one_order(api: App) -> None:
    await store(api, S1)
    body, key = {"studies": [S1]}, {"Idempotency-Key": "race"}
    answers = await asyncio.gather(*[api.client.post(ORDERS, json=body, headers=key) for _ in range(6)])
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["id"] for a in answers}) == 1


async def test_bad_bodies_unknown_and_unstable_studies(api: App) -> None:
    await store(api, S1)
    await store(api, S2, commit=False)  # still inside its quiet period
    for body in (
        {},
        {"studies": []},
        {"studies": ["not-a-uid"]},
        {"studies": [S1, S1]},
        {"studies": [S1], "priority": "stat"},
        {"studies": [S1], "external_id": "x" * 65},
        {"studies": [S1], "colour": "red"},
    ):
        r = await api.client.post(ORDERS, json=body)
        assert r.status_code == 400, body
    bad_key = await api.client.post(ORDERS, json={"studies": [S1]}, headers={"Idempotency-Key": "x" * 256})
    assert bad_key.status_code == 400
    missing = await api.client.post(ORDERS, json={"studies": [S1, S3]})
    assert missing.status_code == 404 and missing.json()["missing"] == [S3]
    unstable = await api.client.post(ORDERS, json={"studies": [S1, S2]})
    assert unstable.status_code == 409 and unstable.json()["unstable"] == [S2]
    assert await api.state.pool.fetchval("SELECT count(*) FROM orders") == 0  # type: ignore[attr-defined]


async def test_detail_of_a_group_order(api: App) -> None:
    await store(api, S1, 2, patient="P-1")
    await store(api, S2, 1, patient="P-2")
    created = await order(api, {"studies": [S2, S1], "external_id": "ris-7", "priority": "urgent"})
    d = await reaches(api, created["id"], "pending")
    assert d["external_id"] == "ris-7" and d["priority"] == "urgent" and d["attempts"] == 0
    assert d["created_at"].endswith("Z") and d["reason"] is None and d["duplicate_of"] is None
    one = next(s for s in d["studies"] if s["study_uid"] == S1)
    assert one == {
        "study_uid": S1,
        "patient_id": "P-1",
        "patient_name": "Doe^Jane",
        "study_date": "20260102",
        "study_time": "101112.000000",
        "modalities": ["CT"],
        "series": 1,
        "instances": 2,
        "study_description": None,
        "status": "pending",
        "url": f"http://testserver/dicomweb/studies/{S1}",
    }
    assert [h["status"] for h in d["history"]] == ["stable", "qc_passed", "pending"]
    assert d["history"][0]["actor"] == "client:test-client" and d["history"][1]["actor"] == "qc"
    assert d["qc"]["passed"] is True and d["reports"] == []
    own = f"http://testserver{ORDERS}/{d['id']}"
    assert d["links"] == {
        "self": own,
        "reports": own + "/reports",
        "qc": own + "#qc",
        "studies": [f"http://testserver/dicomweb/studies/{s}" for s in sorted([S1, S2])],
    }
    assert (await api.client.get(f"{ORDERS}/not-a-uuid")).status_code == 404


async def test_list_filters_and_pages(api: App) -> None:
    await store(api, S1, patient="P-1")
    await store(api, S2, patient="P-2")
    made = []
    for body in (
        {"studies": [S1], "external_id": "e1"},
        {"studies": [S2], "external_id": "e2"},
        {"studies": [S1, S2]},
        {"studies": [S1]},
        {"studies": [S2]},
    ):
        made.append((await order(api, body))["id"])
    assert (await api.client.post(f"{ORDERS}/{made[3]}/cancel")).status_code == 200

    async def ids(**params: Any) -> list[str]:
        r = await api.client.get(ORDERS, params=params)
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] is None
        return [o["id"] for o in r.json()["items"]]

    newest_first = made[::-1]
    assert await ids() == newest_first
    assert await ids(status="failed") == [made[3]]
    assert await ids(study_uid=S1) == [made[3], made[2], made[0]]
    assert await ids(patient_id="P-2") == [made[4], made[2], made[1]]
    assert await ids(external_id="e2") == [made[1]]
    rows = {o["id"]: o for o in (await api.client.get(ORDERS)).json()["items"]}
    middle = rows[made[2]]["created_at"]
    assert await ids(created_after=middle) == [made[4], made[3]]
    assert await ids(created_before=middle) == [made[1], made[0]]
    assert await ids(status="failed", study_uid=S2) == []
    item = rows[made[0]]
    assert item["studies"] == [{"study_uid": S1}] and item["links"]["self"].endswith(made[0])
    assert set(item) == {
        "id", "status", "reason", "priority", "external_id", "note", "source", "duplicate_of",
        "created_at", "updated_at", "studies", "links",
    }  # fmt: skip
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await api.client.get(ORDERS, params=params)).json()
        seen += [o["id"] for o in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == newest_first
    for params in (
        {"status": "lost"},
        {"cursor": "garbage"},
        {"limit": 0},
        {"created_after": "yesterday"},
        {"x": 1},
    ):
        assert (await api.client.get(ORDERS, params=params)).status_code == 400, params


async def test_cancel_then_retry_and_refused_moves(api: App) -> None:
    await store(api, S1)
    created = await order(api, {"studies": [S1]})
    await reaches(api, created["id"], "pending")
    pool = api.state.pool  # type: ignore[attr-defined]
    await pool.execute(  # a worker's live claim (the analysis API's row), withdrawn by the cancel
        "INSERT INTO analysis_job (order_id, tenant, attempt, worker, client_id, lease_expires_at) "
        "VALUES ($1::uuid, $2, 1, 'w', 'test-client', now() + interval '5 minutes')",
        created["id"],
        TENANT,
    )
    refused = await api.client.post(f"{ORDERS}/{created['id']}/retry")
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["detail"] == "An order that is pending cannot retry"
    cancelled = await api.client.post(f"{ORDERS}/{created['id']}/cancel")
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == ("failed", "cancelled")
    assert cancelled.json()["history"][-1]["actor"] == "client:test-client"
    assert await pool.fetchval("SELECT state FROM analysis_job") == "withdrawn"
    assert (await api.client.post(f"{ORDERS}/{created['id']}/cancel")).status_code == 409
    retried = await api.client.post(f"{ORDERS}/{created['id']}/retry")
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["reason"]) == ("pending", None)  # back where it was
    changed = await pool.fetch("SELECT payload FROM event WHERE kind = 'order.status_changed' ORDER BY id")
    assert len(changed) == 4  # qc_passed, pending, failed (cancelled), pending


async def test_retry_of_an_order_cancelled_before_qc_runs_qc_again(api: App) -> None:
    await store(api, S1)
    pool = api.state.pool  # type: ignore[attr-defined]
    async with pool.acquire() as conn, conn.transaction():  # the QC step has not run yet: hold its row
        created = await order(api, {"studies": [S1]})
        await conn.execute("SELECT 1 FROM orders WHERE id = $1::uuid", created["id"])
    cancelled = await api.client.post(f"{ORDERS}/{created['id']}/cancel")
    assert cancelled.status_code == 200
    retried = await api.client.post(f"{ORDERS}/{created['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] in ("stable", "qc_passed", "pending")
    await reaches(api, created["id"], "pending")


async def test_qc_override_after_an_integrity_failure(api: App) -> None:
    await store(api, S1)
    pool, objects = api.state.pool, api.state.store  # type: ignore[attr-defined]
    await objects.delete(await pool.fetchval("SELECT object_key FROM instance"))
    created = await order(api, {"studies": [S1]})
    await qc.run(pool, objects, {"tenant": TENANT, "order": created["id"]})  # or the queue's run: the same
    failed = await reaches(api, created["id"], "failed")
    assert failed["reason"] == "qc" and failed["qc"]["passed"] is False
    assert "object missing" in failed["qc"]["findings"][0]["detail"]
    path = f"{ORDERS}/{created['id']}/qc/override"
    assert (await api.client.post(path, json={})).status_code == 400
    assert (await api.client.post(path, json={"reason": "  "})).status_code == 400
    r = await api.client.post(path, json={"reason": "re-sent by the PACS"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["status"], d["reason"]) == ("pending", None)
    assert [(h["status"], h["reason"], h["actor"]) for h in d["history"][-2:]] == [
        ("qc_passed", "re-sent by the PACS", "client:test-client"),
        ("pending", None, "client:test-client"),
    ]
    assert (await api.client.post(path, json={"reason": "again"})).status_code == 409


async def test_another_tenants_order_is_not_found(api: App) -> None:
    await store(api, S1)
    created = await order(api, {"studies": [S1]})
    own = f"{ORDERS}/{created['id']}"
    assert (await api.client.get(own, headers=OTHER)).status_code == 404
    for action in ("cancel", "retry"):
        assert (await api.client.post(f"{own}/{action}", headers=OTHER)).status_code == 404
    assert (
        await api.client.post(f"{own}/qc/override", json={"reason": "r"}, headers=OTHER)
    ).status_code == 404
    listed = await api.client.get(ORDERS, headers=OTHER)
    assert listed.status_code == 200 and listed.json()["items"] == []
    theirs = await api.client.post(ORDERS, json={"studies": [S1]}, headers=OTHER)
    assert theirs.status_code == 404 and theirs.json()["missing"] == [S1]


async def test_a_token_without_orders_write_may_only_read(api: App) -> None:
    await store(api, S1)
    created = await order(api, {"studies": [S1]})
    reader = bearer(token_for(scopes=("orders.read",)))
    assert (await api.client.post(ORDERS, json={"studies": [S1]}, headers=reader)).status_code == 403
    assert (await api.client.post(f"{ORDERS}/{created['id']}/cancel", headers=reader)).status_code == 403
    assert (await api.client.get(f"{ORDERS}/{created['id']}", headers=reader)).status_code == 200
    assert (await api.client.get(ORDERS, headers=reader)).status_code == 200
    nobody = bearer(token_for(scopes=("dicomweb.read",)))
    assert (await api.client.get(ORDERS, headers=nobody)).status_code == 403
