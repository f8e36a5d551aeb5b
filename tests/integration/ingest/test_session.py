"""IngestSession against the in-memory store and the suite's real PostgreSQL: the cases that reach
the index (stored instances, the duplicate policy, store_object).  No HTTP anywhere."""

from __future__ import annotations

import hashlib

import asyncpg

from dicomweb_server import events
from dicomweb_server.db import store as index
from dicomweb_server.dicom import status
from dicomweb_server.ingest.origin import STOW_RS, UPLOAD, Origin
from dicomweb_server.ingest.outcome import Outcome, Stored
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.settings import IngestSettings
from dicomweb_server.storage.base import new_key
from dicomweb_server.storage.memory import MemoryStore
from tests.conftest import TENANT
from tests.support.dicomfiles import instance

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11"
CT = "1.2.840.10008.5.1.4.1.1.2"
REJECT = IngestSettings()
OVERWRITE = IngestSettings(duplicate_policy="overwrite")


async def ingest(
    store: MemoryStore, pool: asyncpg.Pool, *parts: bytes, settings: IngestSettings = REJECT
) -> Outcome:
    async with IngestSession(Origin(STOW_RS, "test-client"), TENANT, None, settings, store, pool) as s:
        for data in parts:
            s.begin_part()
            for i in range(0, len(data), 4096):
                await s.feed(data[i : i + 4096])
            await s.end_part()
        return await s.finish()


def sop(n: int) -> str:
    return f"{SERIES}.{n}"


async def indexed(pool: asyncpg.Pool) -> list[str]:
    return [r["sop_uid"] for r in await pool.fetch("SELECT sop_uid FROM instance ORDER BY sop_uid")]


async def test_parts_are_stored_indexed_and_named(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    parts = [instance(STUDY, SERIES, sop(n), seed=n, preamble=b"\xff" * 128) for n in (1, 2)]
    outcome = await ingest(store, db, *parts, b"not DICOM")
    assert outcome.stored == tuple(Stored(CT, sop(n), STUDY, SERIES, len(parts[n - 1])) for n in (1, 2))
    assert [f.reason for f in outcome.failed] == [status.CANNOT_UNDERSTAND]
    assert outcome.studies == {STUDY}
    assert await indexed(db) == [sop(1), sop(2)]
    # Each object holds the part as sent but for its preamble (PS3.10 §7.5), and the index its hash.
    objects = sorted(data for data, _ in store.data.values())
    assert objects == sorted(b"\0" * 128 + p[128:] for p in parts)
    rows = await db.fetch("SELECT object_key, sha256 FROM instance")
    assert {r["object_key"]: bytes(r["sha256"]) for r in rows} == {
        key: hashlib.sha256(data).digest() for key, (data, _) in store.data.items()
    }


async def test_the_same_instance_again_is_stored_once(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    data = instance(STUDY, SERIES, sop(1))
    first = await ingest(store, db, data)
    again = await ingest(store, db, data)
    assert [s.sop_uid for s in first.stored] == [s.sop_uid for s in again.stored] == [sop(1)]
    assert again.failed == ()
    assert len(store.data) == 1  # the second object was unreferenced, and removed
    assert await indexed(db) == [sop(1)]


async def test_other_content_under_a_stored_uid_is_refused_or_replaced_by_policy(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    await ingest(store, db, instance(STUDY, SERIES, sop(1), seed=1))
    refused = await ingest(store, db, instance(STUDY, SERIES, sop(1), seed=2))
    assert refused.stored == ()
    assert [(f.reason, f.comment, f.sop_instance_uid) for f in refused.failed] == [
        (status.DUPLICATE_SOP_INSTANCE, index.DUPLICATE_COMMENT, sop(1))
    ]
    assert len(store.data) == 1
    replaced = await ingest(store, db, instance(STUDY, SERIES, sop(1), seed=3), settings=OVERWRITE)
    assert [s.sop_uid for s in replaced.stored] == [sop(1)] and replaced.failed == ()
    assert len(store.data) == 1  # the replaced object went with its row
    (key,) = store.data
    assert await db.fetchval("SELECT object_key FROM instance") == key


async def test_store_object_indexes_an_object_already_in_the_store(db: asyncpg.Pool) -> None:
    store = MemoryStore()
    source = new_key(TENANT)
    data = instance(STUDY, SERIES, sop(7), preamble=b"\x01" * 128)
    writer = store.writer(source)
    await writer.write(data)
    await writer.commit()
    async with IngestSession(Origin(UPLOAD, "test-client"), TENANT, STUDY, REJECT, store, db) as s:
        await s.store_object(source)
        outcome = await s.finish()
    assert [(x.sop_uid, x.size) for x in outcome.stored] == [(sop(7), len(data))]
    assert source not in store.data  # read back into an object of its own, then removed
    (key,) = store.data
    assert store.data[key][0] == b"\0" * 128 + data[128:]
    assert await db.fetchval("SELECT object_key FROM instance") == key


async def stored_events(pool: asyncpg.Pool) -> list[events.InstanceStored]:
    async with pool.acquire() as conn:
        return [e.instance_stored() for e in await events.read(conn, 0, 100, events.INSTANCE_STORED)]


async def object_key(pool: asyncpg.Pool, sop_uid: str) -> str:
    key = await pool.fetchval("SELECT object_key FROM instance WHERE sop_uid = $1", sop_uid)
    assert isinstance(key, str)
    return key


async def test_an_instance_the_index_takes_appends_its_instance_stored_event(db: asyncpg.Pool) -> None:
    """One event per instance the index now references, naming the object it references; none for a
    part that failed, a refused duplicate, or identical bytes sent again (their objects are dropped)."""
    store = MemoryStore()
    await ingest(store, db, *(instance(STUDY, SERIES, sop(n), seed=n) for n in (1, 2)), b"not DICOM")
    keys = [await object_key(db, sop(n)) for n in (1, 2)]
    first = [events.InstanceStored(TENANT, STUDY, SERIES, sop(n), keys[n - 1]) for n in (1, 2)]
    assert await stored_events(db) == first

    again = await ingest(store, db, instance(STUDY, SERIES, sop(1), seed=1))  # the same bytes: a success
    refused = await ingest(store, db, instance(STUDY, SERIES, sop(2), seed=9))  # other bytes: 0x0111
    assert len(again.stored) == 1 and refused.stored == ()
    assert await stored_events(db) == first

    await ingest(store, db, instance(STUDY, SERIES, sop(2), seed=9), settings=OVERWRITE)
    replaced = events.InstanceStored(TENANT, STUDY, SERIES, sop(2), await object_key(db, sop(2)))
    assert replaced.key != first[1].key
    assert await stored_events(db) == [*first, replaced]
