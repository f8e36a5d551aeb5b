"""``GET /api/v1/events`` over the application: CloudEvents pages resumed by cursor, the types
filter, 400s, tenants apart, the long poll, late commits never skipped, and the 410 after
retention with a cursor that resumes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

from dicomweb_server import events
from dicomweb_server.workflow.api import encode_cursor
from tests.conftest import OTHER_CLIENT, OTHER_TENANT, TENANT, App, bearer, token_for

FEED = "/api/v1/events"


def change(n: int, tenant: str = TENANT, kind: str = events.STUDY_RECEIVED) -> events.Change:
    return events.Change(tenant, kind, f"1.2.3.{n}", {"n": n})


async def append(pool: asyncpg.Pool, *changes: events.NewEvent) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await events.append(conn, changes)


async def get(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get(FEED, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert set(body) == {"items", "next_cursor"} and isinstance(body["next_cursor"], str)
    return body


def subjects(body: dict[str, Any]) -> list[str]:
    return [item["subject"] for item in body["items"]]


async def test_items_are_cloudevents_and_object_keys_are_not_shown(app: App, db: asyncpg.Pool) -> None:
    study, series, sop = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.3.9"
    await append(db, events.InstanceStored(TENANT, study, series, sop, "objects/secret"), change(1))
    body = await get(app.client)
    stored, received = body["items"]
    assert stored == {
        "specversion": "1.0",
        "id": stored["id"],
        "source": f"/api/v1/tenants/{TENANT}",
        "type": "instance.stored",
        "time": stored["time"],
        "subject": study,
        "datacontenttype": "application/json",
        "data": {"study": study, "series": series, "instance": sop},
    }
    assert stored["id"].isdigit() and int(received["id"]) > int(stored["id"])
    assert stored["time"].endswith("Z") and stored["time"][:4].isdigit()
    assert received["type"] == "study.received" and received["data"] == {"n": 1}


async def test_pages_resume_from_next_cursor_and_types_filter(app: App, db: asyncpg.Pool) -> None:
    for n in range(5):
        await append(db, change(n, kind=events.STUDY_STABLE if n % 2 else events.STUDY_RECEIVED))
    first = await get(app.client, limit=2)
    second = await get(app.client, limit=2, after=first["next_cursor"])
    third = await get(app.client, limit=2, after=second["next_cursor"])
    assert [subjects(p) for p in (first, second, third)] == [
        ["1.2.3.0", "1.2.3.1"],
        ["1.2.3.2", "1.2.3.3"],
        ["1.2.3.4"],
    ]
    # Nothing new: the same resume point comes back (never null).
    empty = await get(app.client, after=third["next_cursor"])
    assert empty == {"items": [], "next_cursor": third["next_cursor"]}
    stable = await get(app.client, types="study.stable")
    assert subjects(stable) == ["1.2.3.1", "1.2.3.3"]
    both = await get(app.client, types="study.stable, study.received", limit=10)
    assert len(both["items"]) == 5
    none = await get(app.client, types="report.ready")
    assert none["items"] == [] and isinstance(none["next_cursor"], str)


async def test_bad_parameters_are_400_problems(app: App) -> None:
    bad = [
        {"after": "not-a-cursor"},
        {"after": encode_cursor(1)},
        {"after": encode_cursor("a", 1)},
        {"after": encode_cursor(-1, 1)},
        {"after": encode_cursor(1, 2**63)},
        {"types": "study.stable,study.nope"},
        {"types": "study.stable,"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"wait": "31"},
        {"wait": "-1"},
        {"wait": "soon"},
    ]
    for params in bad:
        r = await app.client.get(FEED, params=params)
        assert r.status_code == 400, params
        assert r.headers["content-type"].startswith("application/problem+json"), params
        assert r.json()["status"] == 400
    r = await app.client.get(FEED, params={"types": "study.nope"})
    assert "study.nope" in r.json()["detail"] and r.json()["unknown_types"] == ["study.nope"]


async def test_another_tenants_events_are_invisible(app: App, db: asyncpg.Pool) -> None:
    await append(db, change(1), change(2, tenant=OTHER_TENANT))
    assert subjects(await get(app.client)) == ["1.2.3.1"]
    other = bearer(token_for(client_id=OTHER_CLIENT, tenant=OTHER_TENANT))
    r = await app.client.get(FEED, headers=other)
    assert [(i["subject"], i["source"]) for i in r.json()["items"]] == [("1.2.3.2", "/api/v1/tenants/other")]


async def test_the_feed_needs_the_orders_read_scope(app: App) -> None:
    r = await app.client.get(FEED, headers=bearer(token_for(scopes=("dicomweb.read",))))
    assert r.status_code == 403


async def test_a_long_poll_answers_as_soon_as_an_event_is_appended(app: App, db: asyncpg.Pool) -> None:
    start = await get(app.client)

    async def later() -> None:
        await asyncio.sleep(0.3)
        await append(db, change(7))

    began = time.monotonic()
    task = asyncio.create_task(later())
    body = await get(app.client, after=start["next_cursor"], wait=10)
    took = time.monotonic() - began
    await task
    assert subjects(body) == ["1.2.3.7"]
    assert 0.3 <= took < 2.0
    # With nothing arriving, it answers an empty page after the wait.
    began = time.monotonic()
    empty = await get(app.client, after=body["next_cursor"], wait=0.5)
    assert empty["items"] == [] and 0.5 <= time.monotonic() - began < 2.0


async def test_a_transaction_that_commits_late_is_not_skipped(app: App, db: asyncpg.Pool) -> None:
    await append(db, change(0))
    start = await get(app.client)
    async with db.acquire() as a:
        async with a.transaction():
            await events.append(a, [change(1)])  # A: open, the lower id
            await append(db, change(2))  # B: committed while A is open
            held = await get(app.client, after=start["next_cursor"])
            assert held == {"items": [], "next_cursor": start["next_cursor"]}
        resumed = await get(app.client, after=start["next_cursor"])
    assert subjects(resumed) == ["1.2.3.1", "1.2.3.2"]


async def test_after_retention_an_older_cursor_is_410_with_a_cursor_that_resumes(
    app: App, db: asyncpg.Pool
) -> None:
    for n in range(4):
        await append(db, change(n))
    before = await get(app.client, limit=1)  # a reader that read one event, then went away
    everything = await get(app.client)
    await db.execute(
        "UPDATE event SET created_at = now() - interval '40 days' WHERE subject = ANY($1::text[])",
        ["1.2.3.0", "1.2.3.1"],
    )
    async with db.acquire() as conn:
        assert await events.prune(conn, app.settings.workflow.event_retention_days * 86_400, 1000) == 2
    r = await app.client.get(FEED, params={"after": before["next_cursor"]})
    assert r.status_code == 410
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 410 and isinstance(problem["oldest_cursor"], str)
    resumed = await get(app.client, after=problem["oldest_cursor"])
    assert subjects(resumed) == ["1.2.3.2", "1.2.3.3"]
    assert resumed["next_cursor"] == everything["next_cursor"]
    # From the start: what is kept; and a reader with no events left resumes past the pruned ones.
    assert subjects(await get(app.client)) == ["1.2.3.2", "1.2.3.3"]
    assert (await get(app.client, types="report.ready"))["next_cursor"] == problem["oldest_cursor"]
