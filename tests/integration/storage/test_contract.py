"""One contract, run against every storage backend: local filesystem, a real S3 server (SeaweedFS)
and the in-memory store the unit tests use (it must keep the same contract to stand in for them)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomweb_server.errors import StorageError
from dicomweb_server.settings import S3Settings
from dicomweb_server.storage.base import ObjectStore, StorageFull, new_key
from dicomweb_server.storage.files import FileStore
from dicomweb_server.storage.memory import MemoryStore
from dicomweb_server.storage.s3 import S3Store


@pytest.fixture(params=["file", "s3", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "file":
        yield FileStore(tmp_path / "objects")
        return
    if request.param == "memory":
        yield MemoryStore()
        return
    s3: S3Settings = request.getfixturevalue("s3")
    opened = await S3Store(s3).open()
    try:
        yield opened
    finally:
        async for obj in opened.objects():  # leave the shared bucket empty for the next test
            await opened.delete(obj.key)
        await opened.remove_stale_uploads(time.time() + 3600)
        await opened.close()


async def read_all(store: ObjectStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


async def put(store: ObjectStore, key: str, data: bytes, chunk: int = 65536) -> None:
    writer = store.writer(key)
    for i in range(0, len(data), chunk):
        await writer.write(data[i : i + chunk])
    assert await writer.commit() == hashlib.sha256(data).digest()  # the digest of what was stored


async def keys(store: ObjectStore) -> set[str]:
    return {obj.key async for obj in store.objects()}


async def test_small_object_round_trip_range_and_delete(store: ObjectStore) -> None:
    key, data = new_key("t1"), os.urandom(100_000)
    await put(store, key, data)
    assert await read_all(store, key) == data
    assert await read_all(store, key, 10, 110) == data[10:110]
    listed = [o async for o in store.objects()]
    assert [(o.key, o.size) for o in listed] == [(key, len(data))]
    assert abs(listed[0].modified - time.time()) < 120
    await store.delete(key)
    assert await keys(store) == set()
    await store.delete(key)  # deleting twice is harmless


async def test_large_object_goes_up_in_parts(store: ObjectStore) -> None:
    key = new_key("t1")
    data = os.urandom(12 * 1024 * 1024 + 12345)  # more than two 5 MiB S3 parts
    await put(store, key, data, chunk=1 << 20)
    got = await read_all(store, key)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert await read_all(store, key, 5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 3) == data[5242877:5242883]


async def test_empty_object(store: ObjectStore) -> None:
    key = new_key("t1")
    await put(store, key, b"")
    assert await read_all(store, key) == b""


async def test_abort_leaves_nothing(store: ObjectStore) -> None:
    key = new_key("t1")
    writer = store.writer(key)
    await writer.write(os.urandom(12 * 1024 * 1024))  # S3: a multipart upload is under way by now
    await writer.abort()
    await writer.abort()
    assert await keys(store) == set()
    assert await store.remove_stale_uploads(time.time() + 60) == 0  # the abort already cleaned up


async def test_unfinished_writes_are_removed_after_grace(store: ObjectStore) -> None:
    writer = store.writer(new_key("t1"))
    await writer.write(os.urandom(12 * 1024 * 1024))  # never committed nor aborted: a crashed request
    assert await store.remove_stale_uploads(time.time() - 3600) == 0  # still within grace
    assert await store.remove_stale_uploads(time.time() + 60) == 1
    assert await keys(store) == set()


async def test_keys_are_server_derived_and_checked(store: ObjectStore) -> None:
    assert new_key("t1") != new_key("t1")
    for bad in ("../../etc/passwd", "t1/../x", "T1/20260101/1200/" + "0" * 32, "t1/ab/" + "0" * 32, "/abs"):
        with pytest.raises(StorageError):
            store.writer(bad)
    with pytest.raises(StorageError):
        await read_all(store, new_key("t1"))  # missing object


async def test_ping(store: ObjectStore) -> None:
    await store.ping()


async def test_many_concurrent_commits_each_durable_with_its_own_digest(store: ObjectStore) -> None:
    """The file backend commits in batches (one thread hop for many objects): every object still
    gets its own bytes and digest, small ones and one spilled past the in-memory limit alike."""
    objects = {new_key("t"): os.urandom(1000 + 37 * i) for i in range(40)}
    objects[new_key("t")] = os.urandom(3 * 1024 * 1024 + 5)

    async def commit(key: str, data: bytes) -> bytes:
        writer = store.writer(key)
        for i in range(0, len(data), 65536):
            await writer.write(data[i : i + 65536])
        return await writer.commit()

    digests = await asyncio.gather(*(commit(k, d) for k, d in objects.items()))
    assert digests == [hashlib.sha256(d).digest() for d in objects.values()]
    for key, data in objects.items():
        assert await read_all(store, key) == data
    assert await keys(store) == set(objects)


async def test_a_failing_object_fails_alone_in_its_commit_batch(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    (store.root / "blocked").write_bytes(b"")  # a file where tenant "blocked" needs its directory
    good = {new_key("good"): os.urandom(2000 + i) for i in range(30)}
    bad = new_key("blocked")
    writers = {key: store.writer(key) for key in [*good, bad]}
    for key, writer in writers.items():
        await writer.write(good.get(key, b"never stored"))
    results = await asyncio.gather(*(w.commit() for w in writers.values()), return_exceptions=True)
    outcome = dict(zip(writers, results, strict=True))
    assert isinstance(outcome.pop(bad), StorageError)
    assert outcome == {key: hashlib.sha256(data).digest() for key, data in good.items()}
    assert await keys(store) == set(good)
    assert list(store.staging.iterdir()) == []  # the failed object's temp file is gone too


async def test_memory_store_full_fails_the_commit_like_a_full_disk() -> None:
    """The in-memory store's capacity: the commit that would pass it raises StorageFull (0xA700)
    and leaves nothing behind, as ENOSPC does for the file backend."""
    store = MemoryStore(capacity=1500)
    first, second = new_key("t"), new_key("t")
    await put(store, first, os.urandom(1000))
    writer = store.writer(second)
    await writer.write(os.urandom(1000))
    with pytest.raises(StorageFull):
        await writer.commit()
    assert await keys(store) == {first}
    assert await store.remove_stale_uploads(time.time() + 60) == 0
