"""The audit trail survives any input (issue 10, item 7), records token requests under their
client's tenant (item 14), and is read newest first with filters and a cursor.

Over ASGI and against a real ``dicomweb-server serve`` process; the database is the real
PostgreSQL of the run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from dicomweb_server.access.audit import AuditTrail
from dicomweb_server.jobs.runner import Runner
from dicomweb_server.logs import JsonFormatter
from tests.conftest import CLIENT, TENANT, App, Server, bearer
from tests.e2e.access.test_access import (
    DICOM_ANY,
    STUDIES,
    anonymous,
    new_client,
    other_headers,
    random_uids,
    token_basic,
    token_post,
)
from tests.support.dicomfiles import content_type, instance, multipart

POISON = "/dicomweb/studies/1.2.3%00"


async def rows_by_request(
    db: asyncpg.Pool, request_ids: Iterable[str], wait: float = 3.0
) -> dict[str, asyncpg.Record]:
    """The audit rows of these requests, straight from the table, waiting for the writer."""
    wanted = list(request_ids)
    deadline = time.monotonic() + wait
    while True:
        rows = await db.fetch("SELECT * FROM audit WHERE request_id = ANY($1::text[])", wanted)
        found = {r["request_id"]: r for r in rows}
        if set(wanted) <= set(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def stow_wado_delete(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    study, series, sop = random_uids()
    ids = {}
    r = await client.post(
        STUDIES, content=multipart([instance(study, series, sop)]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200, r.text
    ids["store"] = r.headers["x-request-id"]
    r = await client.get(f"{STUDIES}/{study}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    ids["retrieve"] = r.headers["x-request-id"]
    r = await client.delete(f"{STUDIES}/{study}")
    assert r.status_code == 204
    ids["delete"] = r.headers["x-request-id"]
    return study, ids


# -- item 7: poisoning ----------------------------------------------------------------------------


async def test_the_audit_poisoning_request_does_not_stop_the_trail(app: App, db: asyncpg.Pool) -> None:
    async with anonymous(app) as anon:
        poison = await anon.get(POISON)
        assert poison.status_code == 401
        hostile = await anon.get(STUDIES + "/" + "%C3%A9%01%7F" * 300, headers=bearer("x"))
        assert hostile.status_code == 401
    study, ids = await stow_wado_delete(app.client)
    r = await app.client.get("/admin/audit", params={"limit": 1000})
    assert r.status_code == 200
    mine = {row["request_id"]: row for row in r.json()}
    deadline = time.monotonic() + 3
    while not set(ids.values()) <= set(mine) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        mine = {row["request_id"]: row for row in (await app.client.get("/admin/audit")).json()}
    for name, request_id in ids.items():
        assert request_id in mine, f"no audit row for the {name}"
        assert mine[request_id]["study_uid"] == study
    # The poisoning requests are there too: a Security Alert under no tenant, the UID in a safe form.
    found = await rows_by_request(db, [poison.headers["x-request-id"], hostile.headers["x-request-id"]])
    assert len(found) == 2
    for row in found.values():
        assert (row["event_id"], row["status"], row["tenant"]) == (110113, 401, None)
        assert re.fullmatch(r"invalid:[0-9a-f]{16}", row["study_uid"]), row["study_uid"]
    assert app.state.audit.dropped == 0  # type: ignore[attr-defined]
    assert app.state.audit.reduced == 0  # type: ignore[attr-defined]


def test_the_audit_poisoning_request_against_a_real_server(live_server: Server, curl: str) -> None:
    done = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", live_server.url + POISON],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == "401", done.stderr
    headers = live_server.headers
    study, series, sop = random_uids()
    ids = []
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as client:
        r = client.post(
            STUDIES, content=instance(study, series, sop), headers={"Content-Type": "application/dicom"}
        )
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
        r = client.get(f"{STUDIES}/{study}/series/{series}/instances/{sop}", headers={"Accept": DICOM_ANY})
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
        r = client.delete(f"{STUDIES}/{study}")
        assert r.status_code == 204
        ids.append(r.headers["x-request-id"])
        deadline = time.monotonic() + 5
        while True:
            rows = client.get("/admin/audit", params={"limit": 10}).json()
            if set(ids) <= {row["request_id"] for row in rows} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    by_id = {row["request_id"]: row for row in rows}
    assert [by_id[i]["transaction"] for i in ids if i in by_id] == ["store", "retrieve", "delete"]
    assert "audit write failed" not in live_server.log.read_text()


async def test_every_hostile_value_is_written_and_safe(db: asyncpg.Pool) -> None:
    trail = AuditTrail(db)
    hostile = ["1.2.3\x00", "a\udc80b", "x" * 100_000, "1.2.3.", "\x1b[31m", "Doe^John", "٣.٣", "1" * 65]
    for i, value in enumerate(hostile):
        state = {"transaction": "retrieve", "tenant": TENANT, "client_id": value}
        trail.record(state, 200, f"hostile-{i}-{uuid.uuid4().hex[:8]}", value)
    trail.record(
        {"transaction": "retrieve", "tenant": "Not A Tenant\x00"}, 404, "x\x00" * 40, "1.2.840.10008"
    )
    queued = [row[10] for row in trail.queue]
    await trail.flush()
    assert (trail.written, trail.reduced, trail.dropped) == (len(hostile) + 1, 0, 0)
    rows = await db.fetch("SELECT * FROM audit WHERE request_id = ANY($1::text[])", queued)
    assert len(rows) == len(hostile) + 1
    for row in rows:
        for column in ("tenant", "study_uid", "request_id"):
            value = row[column]
            assert value is None or re.fullmatch(r"[A-Za-z0-9._:-]{1,80}", value), (column, value)
        assert row["client_id"] is None or re.fullmatch(r"[!-~]{1,128}", row["client_id"]), row["client_id"]
    last = next(r for r in rows if r["study_uid"] == "1.2.840.10008")
    assert last["tenant"].startswith("invalid:") and last["request_id"].startswith("invalid:")


async def test_a_row_that_cannot_be_written_is_written_reduced_and_blocks_no_other(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(db)
    before = f"before-{uuid.uuid4().hex[:8]}"
    after = f"after-{uuid.uuid4().hex[:8]}"
    trail.record({"transaction": "store", "tenant": TENANT, "client_id": CLIENT}, 200, before, "1.2.3")
    # A row that skipped the sanitising (as a future bug might): a NUL the database refuses.
    bad = (datetime.now(UTC), TENANT, "Doe^John\x00", 110103, "DICOM Instances Accessed", "R", "retrieve",
           "1.2.3\x00", 200, 0, f"bad-{uuid.uuid4().hex[:8]}")  # fmt: skip
    trail.queue.append(bad)
    trail.record({"transaction": "delete", "tenant": TENANT, "client_id": CLIENT}, 204, after, "1.2.3")
    with caplog.at_level(logging.INFO):
        await trail.flush()
    assert (trail.written, trail.reduced, trail.dropped) == (3, 1, 0)
    rows = await rows_by_request(db, [before, bad[10], after], wait=0)
    assert set(rows) == {before, bad[10], after}
    kept = rows[bad[10]]
    assert (kept["tenant"], kept["client_id"], kept["study_uid"], kept["status"]) == (TENANT, None, None, 200)
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "reduced form" in text and bad[10] in text and "CharacterNotInRepertoire" in text
    assert "Doe" not in text and "1.2.3" not in text


async def test_the_queue_is_bounded_and_drops_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    trail = AuditTrail(None, max_queued=5)
    with caplog.at_level(logging.ERROR, logger="dicomweb_server.access.audit"):
        for i in range(8):
            trail.record({"transaction": "store"}, 200, f"r{i}", None)
    assert (trail.queued, trail.dropped) == (5, 3)
    assert [r.getMessage() for r in caplog.records] == ["audit queue full: rows dropped"]


async def test_an_unreachable_database_keeps_rows_then_shutdown_reports_them(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await pool.close()  # the database cannot be written
    trail = AuditTrail(pool)
    for i in range(3):
        trail.record({"transaction": "store", "tenant": TENANT}, 200, f"lost-{i}", None)
    with pytest.raises(Exception):  # noqa: B017 - asyncpg's own "pool is closed"
        await trail.flush()
    assert (trail.queued, trail.written, trail.reduced) == (3, 0, 0)  # nothing lost yet, nothing reduced
    with caplog.at_level(logging.ERROR, logger="dicomweb_server.access.audit"):
        await trail.close()
    assert (trail.queued, trail.dropped) == (0, 3)
    [report] = [r for r in caplog.records if r.getMessage() == "audit rows could not be written at shutdown"]
    assert report.levelno == logging.ERROR
    assert report.rows == 3 and report.request_ids == ["lost-0", "lost-1", "lost-2"]  # type: ignore[attr-defined]


async def test_shutdown_flushes_what_is_queued(db: asyncpg.Pool) -> None:
    trail = AuditTrail(db)
    ids = [f"shutdown-{i}-{uuid.uuid4().hex[:8]}" for i in range(1500)]  # more than one batch
    for request_id in ids:
        trail.record({"transaction": "search-studies", "tenant": TENANT}, 200, request_id, None)
    await trail.close()
    assert (trail.written, trail.dropped, trail.queued) == (1500, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM audit WHERE request_id = ANY($1::text[])", ids) == 1500


# -- item 14: token requests in the tenant's trail --------------------------------------------------


async def test_token_requests_are_in_their_tenants_audit(app: App, db: asyncpg.Pool) -> None:
    client_id, secret = await new_client(db, cheap=True)
    async with anonymous(app) as anon:
        ok = await token_basic(anon, client_id, secret)
        assert ok.status_code == 200
        wrong = await token_post(anon, client_id, secret + "x")
        assert wrong.status_code == 401
        typed = f"nobody-{uuid.uuid4().hex[:8]}"
        unknown = await token_basic(anon, typed, secret)
        assert unknown.status_code == 401
    ids = {n: r.headers["x-request-id"] for n, r in (("ok", ok), ("wrong", wrong), ("unknown", unknown))}
    found = await rows_by_request(db, ids.values())
    assert (found[ids["ok"]]["event_id"], found[ids["ok"]]["outcome"]) == (110114, 0)
    assert (found[ids["wrong"]]["event_id"], found[ids["wrong"]]["outcome"]) == (110114, 4)
    for name in ("ok", "wrong"):
        assert (found[ids[name]]["tenant"], found[ids[name]]["client_id"]) == (TENANT, client_id)
    alert = found[ids["unknown"]]
    assert (alert["event_id"], alert["tenant"], alert["status"]) == (110113, None, 401)
    assert re.fullmatch(r"unknown:[0-9a-f]{16}", alert["client_id"]) and typed not in alert["client_id"]
    # The tenant sees its client's requests, filtered by client; nobody's tenant sees the alert.
    r = await app.client.get("/admin/audit", params={"client_id": client_id, "transaction": "token"})
    assert r.status_code == 200
    assert [row["request_id"] for row in r.json()] == [ids["wrong"], ids["ok"]]  # newest first
    r = await app.client.get("/admin/audit", params={"client_id": client_id, "outcome": "4"})
    assert [row["request_id"] for row in r.json()] == [ids["wrong"]]
    for headers in (None, other_headers()):
        rows = (await app.client.get("/admin/audit", params={"limit": 1000}, headers=headers)).json()
        assert ids["unknown"] not in {row["request_id"] for row in rows}


# -- item 14: reading the trail -----------------------------------------------------------------


async def test_audit_pages_newest_first_with_a_cursor_and_filters(app: App, db: asyncpg.Pool) -> None:
    start = datetime.now(UTC)  # the rows are stamped by this process, after this
    ids = []
    for _ in range(5):
        r = await app.client.get(STUDIES)
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    await rows_by_request(db, ids)
    # Earlier tests' rows of this second may match the time and event: the client narrows it.
    pages: list[list[str]] = []
    query = {"limit": "2", "event": "110112", "client_id": CLIENT, "since": start.isoformat()}
    url: str | None = "/admin/audit?" + str(httpx.QueryParams(query))
    while url and len(pages) < 10:
        r = await app.client.get(url)
        assert r.status_code == 200, r.text
        pages.append([row["request_id"] for row in r.json()])
        link = r.headers.get("link")
        found = re.fullmatch(r'<http://testserver([^>]+)>; rel="next"', link or "")
        url = found.group(1) if found else None
    assert [i for page in pages for i in page] == ids[::-1]
    assert [len(p) for p in pages] == [2, 2, 1]
    r = await app.client.get("/admin/audit", params={"until": start.isoformat(), "event": "110112"})
    assert not set(ids) & {row["request_id"] for row in r.json()}
    r = await app.client.get("/admin/audit", params={"since": start.isoformat(), "transaction": "store"})
    assert not set(ids) & {row["request_id"] for row in r.json()}


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=0",
        "limit=1001",
        "limit=",
        "limit=%C2%B3",
        "limit=%D9%A3",
        "limit=1e3",
        "limit=10&limit=20",
        "after=99999999999999999999",
        "after=-1",
        "cursor=bm9wZQ",
        "cursor=%00",
        "cursor=" + "A" * 5000,
        "since=yesterday",
        "since=2026-13-01T00:00:00Z",
        "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
        "until=%D9%A3",
        "until=9999-12-31T23:59:59-12:00",
        "since=0001-01-01T00:00:00%2B01:00",
        "since=2026-12-01T00:00:00%2B99:00",
        "event=110999",
        "event=abc",
        "outcome=3",
        "transaction=everything",
        "client_id=a%00b",
        "PatientName=x",
        "offset=10",
        "foo",
    ],
)
async def test_bad_audit_parameters_are_400(app: App, query: str) -> None:
    r = await app.client.get("/admin/audit?" + query)
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert r.json()["message"]


async def test_good_audit_parameters_are_accepted(app: App) -> None:
    for query in (
        {"limit": "1"},
        {"limit": "1000"},
        {"after": "0"},
        {"since": "2026-01-01T00:00:00Z", "until": "2030-01-01T00:00:00+01:00"},
        {"since": "2026-01-01"},
        {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T00:00:00Z"},
        {"client_id": CLIENT, "event": "110113", "outcome": "12", "transaction": "token"},
    ):
        r = await app.client.get("/admin/audit", params=query)
        assert r.status_code == 200, (query, r.text)
        assert isinstance(r.json(), list)


async def test_the_writer_retries_after_an_outage_without_new_requests(
    db: asyncpg.Pool, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    trail = AuditTrail(closed)
    ids = [f"outage-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with caplog.at_level(logging.INFO, logger="dicomweb_server.access.audit"):
        async with Runner({"audit.flush": trail.job()}):  # as the server's runner runs it
            for request_id in ids:
                trail.record({"transaction": "store", "tenant": TENANT}, 200, request_id, None)
            await asyncio.sleep(0.5)  # the first attempt fails (and is logged); the writer waits 1 s
            assert trail.queued == 3 and trail.written == 0
            trail.pool = db  # the database is back; no request comes to wake the writer
            found = await rows_by_request(db, ids, wait=5)
            assert set(found) == set(ids)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["audit write failed; rows kept for a retry", "audit writes resumed"], messages
    assert (trail.written, trail.dropped, trail.reduced) == (3, 0, 0)
