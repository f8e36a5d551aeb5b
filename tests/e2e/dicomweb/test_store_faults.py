"""STOW under faults: the index or the object store failing gives 503 and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from dicomweb_server.errors import StorageError
from dicomweb_server.storage.base import ObjectWriter, StorageFull
from dicomweb_server.storage.files import FileStore
from tests.conftest import App
from tests.support.dicomfiles import content_type, instance, multipart


class FailingCommits(FileStore):
    """The real FileStore, except that the n-th commit raises ``error`` (fault injection)."""

    def __init__(self, root: Path, fail_on: int, error: StorageError):
        super().__init__(root)
        self.commits = 0
        self.fail_on = fail_on
        self.error = error

    def writer(self, key: str) -> ObjectWriter:
        inner = super().writer(key)
        store = self

        class Writer:
            async def write(self, data: bytes | memoryview) -> None:
                await inner.write(data)

            async def commit(self) -> bytes:
                store.commits += 1
                if store.commits == store.fail_on:
                    await inner.abort()
                    raise store.error
                return await inner.commit()

            async def abort(self) -> None:
                await inner.abort()

        return Writer()


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_object_store_failure_is_503_and_nothing_is_indexed(app: App, db: asyncpg.Pool) -> None:
    root = app.settings.storage.path
    app.state.store = FailingCommits(root, 2, StorageError("injected"))  # type: ignore[attr-defined]
    body = multipart([instance(seed=i) for i in range(3)])
    r = await app.client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert await db.fetchval("SELECT count(*) FROM instance") == 0
    assert files_under(root) == []  # the objects that did commit were removed again


async def test_out_of_space_fails_that_instance_with_a700(app: App, db: asyncpg.Pool) -> None:
    root = app.settings.storage.path
    app.state.store = FailingCommits(root, 2, StorageFull("injected"))  # type: ignore[attr-defined]
    body = multipart([instance(seed=i) for i in range(3)])
    r = await app.client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 202
    failed = r.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700]
    assert await db.fetchval("SELECT count(*) FROM instance") == 2
    assert len(files_under(root)) == 2


async def test_database_unavailable_is_503_and_objects_are_removed(app: App) -> None:
    # The database goes away: every connection is cut at once (close() would wait for the ones
    # held for good, such as the change feed's LISTEN connection, to be released).
    app.state.pool.terminate()  # type: ignore[attr-defined]
    r = await app.client.post(
        "/dicomweb/studies", content=instance(), headers={"Content-Type": "application/dicom"}
    )
    assert r.status_code == 503
    assert "database" in r.json()["message"]
    assert files_under(app.settings.storage.path) == []
    ready = await app.client.get("/readyz")
    assert ready.status_code == 503
