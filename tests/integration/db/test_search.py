"""db/search.py's page query: a page of rows, and the total only when more rows remain."""

from __future__ import annotations

import asyncpg
from pydicom.uid import generate_uid

from dicomweb_server.db import store
from dicomweb_server.db.pool import connection
from dicomweb_server.db.search import search_page, to_sql
from dicomweb_server.dicom.query import STUDIES, parse_query
from tests.conftest import TENANT
from tests.integration.db.records import record


async def test_a_page_and_its_total(db: asyncpg.Pool) -> None:
    studies = sorted(generate_uid() for _ in range(3))
    await store.commit_batch(db, TENANT, [record(s) for s in studies], overwrite=False)
    async with connection(db) as conn:
        rows, total = await search_page(conn, to_sql(parse_query("limit=2", STUDIES), TENANT), 2)
        assert len(rows) == 2 and total == 3
        rows, total = await search_page(conn, to_sql(parse_query("limit=5", STUDIES), TENANT), 5)
        assert sorted(r["study_uid"] for r in rows) == studies and total is None
        query = parse_query(f"StudyInstanceUID={studies[1]}", STUDIES)
        rows, total = await search_page(conn, to_sql(query, TENANT), query.limit)
        assert [r["study_uid"] for r in rows] == [studies[1]] and total is None
