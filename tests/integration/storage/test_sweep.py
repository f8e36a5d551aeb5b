"""The sweep removes objects no committed row references, after the grace period, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest

from dicomweb_server.ingest.sweep import sweep
from dicomweb_server.settings import S3Settings
from tests.conftest import make_settings, running_app
from tests.integration.storage.test_contract import keys, put
from tests.support.dicomfiles import instance


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_orphans_go_after_grace_referenced_objects_stay(
    backend: str, db: asyncpg.Pool, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3: S3Settings | None = request.getfixturevalue("s3") if backend == "s3" else None
    settings = make_settings(database_url, tmp_path / "objects", storage=dict(s3=s3))
    async with running_app(settings) as app:
        store = app.state.store  # type: ignore[attr-defined]
        r = await app.client.post(
            "/dicomweb/studies", content=instance(), headers={"Content-Type": "application/dicom"}
        )
        assert r.status_code == 200
        (kept,) = await keys(store)
        orphan = (
            "default/20260101/1200/" + "ab" * 16
        )  # what a crash between object write and index commit leaves
        await put(store, orphan, b"orphan")
        unfinished = store.writer("default/20260101/1200/" + "cd" * 16)
        await unfinished.write(b"x" * (12 * 1024 * 1024))  # an upload that never finished

        report = await sweep(app.state.pool, store, grace=3600)  # type: ignore[attr-defined]
        assert (report.removed_objects, report.removed_uploads) == (0, 0)
        assert await keys(store) == {kept, orphan}

        report = await sweep(app.state.pool, store, grace=0, now=time.time() + 5)  # type: ignore[attr-defined]
        assert report.removed_objects == 1
        assert report.removed_uploads == 1
        assert await keys(store) == {kept}
        assert await db.fetchval("SELECT object_key FROM instance") == kept
        for obj in [o async for o in store.objects()]:
            await store.delete(obj.key)
