"""db/retrieve.py: a study, series or instance resource's instances and metadata, as WADO-RS reads them."""

from __future__ import annotations

import asyncpg
import orjson
from pydicom.uid import generate_uid

from dicomweb_server.db import retrieve, store
from dicomweb_server.db.pool import connection
from tests.conftest import OTHER_TENANT, TENANT
from tests.integration.db.records import record


async def test_instances_and_metadata_of_each_resource_level(db: asyncpg.Pool) -> None:
    study, series = generate_uid(), generate_uid()
    records = [record(study, series, seed=1), record(study, series, seed=2), record(study, seed=3)]
    await store.commit_batch(db, TENANT, records, overwrite=False)
    async with connection(db) as conn:
        found = await retrieve.find_instances(conn, TENANT, study)
        # Series by series, in ingest order (one batch writes series and instances in UID order).
        ingested = sorted(records, key=lambda r: (r.series_uid, r.sop_uid))
        assert [i.sop_uid for i in found] == [r.sop_uid for r in ingested]
        first = found[0]
        assert (first.object_key, first.size, first.sha256) == (
            ingested[0].object_key,
            ingested[0].size,
            ingested[0].sha256,
        )
        assert first.metadata is None
        assert len(await retrieve.find_instances(conn, TENANT, study, series)) == 2
        assert await retrieve.find_instances(conn, OTHER_TENANT, study) == []  # another tenant's view

        one = await retrieve.find_instance(conn, TENANT, study, series, records[1].sop_uid, metadata=True)
        assert one is not None and one.sop_uid == records[1].sop_uid
        assert one.metadata is not None
        assert orjson.loads(one.metadata) == orjson.loads(records[1].metadata)
        assert await retrieve.find_instance(conn, TENANT, study, generate_uid(), records[1].sop_uid) is None

        text = await retrieve.metadata(conn, TENANT, study, series)
        assert text is not None
        sops = [m["00080018"]["Value"][0] for m in orjson.loads(text)]
        assert sops == sorted(r.sop_uid for r in records[:2])
        assert await retrieve.metadata(conn, TENANT, generate_uid()) is None


def test_the_resource_scope_names_each_level_once() -> None:
    assert retrieve.resource_scope("1", None, None) == ("st.study_uid = $2", ["1"])
    assert retrieve.resource_scope("1", "2", "3") == (
        "st.study_uid = $2 AND se.series_uid = $3 AND i.sop_uid = $4",
        ["1", "2", "3"],
    )
