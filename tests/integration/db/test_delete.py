"""db/delete.py: removing a resource brings the aggregates down and hands back the keys to delete."""

from __future__ import annotations

import asyncpg
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.db import delete, store
from dicomweb_server.db.pool import connection, transaction
from tests.conftest import TENANT
from tests.integration.db.records import record

AGGREGATES = "SELECT num_instances, num_series, modalities FROM study WHERE study_uid = $1"


async def test_deleting_an_instance_then_its_series_empties_the_study(db: asyncpg.Pool) -> None:
    study, series = generate_uid(), generate_uid()
    a, b, c = record(study, series), record(study, series), record(study, modality="MR")
    await store.commit_batch(db, TENANT, [a, b, c], overwrite=False)
    async with transaction(db) as conn:
        assert await delete.delete(conn, TENANT, study, series, a.sop_uid) == [a.object_key]
    row = await db.fetchrow(AGGREGATES, study)
    assert dict(row) == {"num_instances": 2, "num_series": 2, "modalities": ["CT", "MR"]}
    async with transaction(db) as conn:
        assert await delete.delete(conn, TENANT, study, series) == [b.object_key]
    row = await db.fetchrow(AGGREGATES, study)
    assert dict(row) == {"num_instances": 1, "num_series": 1, "modalities": ["MR"]}
    async with transaction(db) as conn:
        assert await delete.delete(conn, TENANT, study) == [c.object_key]
        assert await delete.delete(conn, TENANT, study) is None  # gone
    assert await db.fetchval("SELECT count(*) FROM study WHERE study_uid = $1", study) == 0


async def test_an_unknown_resource_is_none_and_delete_needs_a_transaction(db: asyncpg.Pool) -> None:
    r = record(generate_uid())
    await store.commit_batch(db, TENANT, [r], overwrite=False)
    async with transaction(db) as conn:
        assert await delete.delete(conn, TENANT, generate_uid()) is None
        assert await delete.delete(conn, TENANT, r.study_uid, r.series_uid, generate_uid()) is None
    async with connection(db) as conn:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            await delete.delete(conn, TENANT, r.study_uid)


async def test_referenced_keys(db: asyncpg.Pool) -> None:
    r = record(generate_uid())
    await store.commit_batch(db, TENANT, [r], overwrite=False)
    async with connection(db) as conn:
        assert await delete.referenced_keys(conn, [r.object_key, "k/none"]) == {r.object_key}
        assert await delete.referenced_keys(conn, []) == set()
