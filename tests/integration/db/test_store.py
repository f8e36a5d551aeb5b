"""db/store.py: one batch indexed, the duplicate policy, the aggregates, and composing the write."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.db import store
from dicomweb_server.db.pool import connection, transaction
from dicomweb_server.dicom.status import DATASET_DOES_NOT_MATCH_SOP_CLASS, DUPLICATE_SOP_INSTANCE
from tests.conftest import TENANT
from tests.integration.db.records import record


async def test_a_batch_is_indexed_with_its_study_and_series_aggregates(db: asyncpg.Pool) -> None:
    study, series = generate_uid(), generate_uid()
    records = [record(study, series), record(study, series), record(study, modality="MR")]
    out = await store.commit_batch(db, TENANT, records, overwrite=False)
    assert out.stored == {r.object_key for r in records}
    assert out.failed == {} and out.unreferenced_keys == []
    row = await db.fetchrow(
        "SELECT num_instances, num_series, modalities FROM study WHERE tenant = $1 AND study_uid = $2",
        TENANT,
        study,
    )
    assert dict(row) == {"num_instances": 3, "num_series": 2, "modalities": ["CT", "MR"]}
    assert await db.fetchval("SELECT num_instances FROM series WHERE series_uid = $1", series) == 2


async def test_the_same_instance_again_is_a_success_and_its_new_object_unreferenced(db: asyncpg.Pool) -> None:
    first = record(generate_uid())
    await store.commit_batch(db, TENANT, [first], overwrite=False)
    again = dataclasses.replace(first, object_key="k/again")
    out = await store.commit_batch(db, TENANT, [again], overwrite=False)
    assert out.stored == {"k/again"} and out.failed == {}
    assert out.unreferenced_keys == ["k/again"]
    assert await db.fetchval("SELECT num_instances FROM study WHERE study_uid = $1", first.study_uid) == 1


@pytest.mark.parametrize("overwrite", [False, True])
async def test_other_content_under_a_stored_uid_is_refused_or_replaced(
    db: asyncpg.Pool, overwrite: bool
) -> None:
    first = record(generate_uid())
    await store.commit_batch(db, TENANT, [first], overwrite=False)
    other = dataclasses.replace(first, object_key="k/other", sha256=b"\1" * 32)
    out = await store.commit_batch(db, TENANT, [other], overwrite=overwrite)
    key = await db.fetchval("SELECT object_key FROM instance WHERE sop_uid = $1", first.sop_uid)
    if overwrite:
        assert out.stored == {"k/other"} and out.failed == {}
        assert out.unreferenced_keys == [first.object_key]  # the replaced object
        assert key == "k/other"
    else:
        assert out.stored == set()
        failure = out.failed["k/other"]
        assert (failure.reason, failure.comment) == (DUPLICATE_SOP_INSTANCE, store.DUPLICATE_COMMENT)
        assert out.unreferenced_keys == ["k/other"]
        assert key == first.object_key


async def test_a_series_of_another_study_fails_and_leaves_no_empty_study(db: asyncpg.Pool) -> None:
    series = generate_uid()
    await store.commit_batch(db, TENANT, [record(generate_uid(), series)], overwrite=False)
    stray = record(generate_uid(), series)
    out = await store.commit_batch(db, TENANT, [stray], overwrite=False)
    failure = out.failed[stray.object_key]
    assert failure.reason == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert failure.comment == store.SERIES_ELSEWHERE_COMMENT
    assert out.unreferenced_keys == [stray.object_key]
    assert await db.fetchval("SELECT count(*) FROM study WHERE study_uid = $1", stray.study_uid) == 0


async def test_store_batch_commits_with_the_callers_transaction_or_not_at_all(db: asyncpg.Pool) -> None:
    """A caller writes its own rows (an event) in the same transaction: both commit, or neither."""
    kept, dropped = record(generate_uid()), record(generate_uid())
    async with transaction(db) as conn:
        out = await store.store_batch(conn, TENANT, [kept], overwrite=False)
        assert out.stored == {kept.object_key}
    with pytest.raises(LookupError):
        async with transaction(db) as conn:
            await store.store_batch(conn, TENANT, [dropped], overwrite=False)
            raise LookupError  # the caller's next write failed
    async with connection(db) as conn:
        found = await conn.fetch("SELECT sop_uid FROM instance")
    assert [r["sop_uid"] for r in found] == [kept.sop_uid]
