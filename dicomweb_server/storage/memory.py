"""An in-memory backend with the same contract as the others, for unit tests.

As httpx keeps a mock transport beside its real ones (DESIGN.md, "Models worth copying" 8), the
ingest session's tests run against this store instead of a filesystem: the same writer protocol,
the same key checks, the same errors.  ``capacity`` makes a commit that would exceed it raise
``StorageFull``, the way a full disk does (ENOSPC), so the 0xA700 path is tested without faking.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

from dicomweb_server.errors import StorageError
from dicomweb_server.storage.base import READ_CHUNK, StorageFull, StoredObject, check_key


class MemoryStore:
    """Objects as ``bytes`` in a dict; each unfinished write is remembered until it commits or aborts."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.data: dict[str, tuple[bytes, float]] = {}
        self.uploads: dict[MemoryWriter, float] = {}  # unfinished writes and when they started

    def writer(self, key: str) -> MemoryWriter:
        check_key(key)
        writer = MemoryWriter(self, key)
        self.uploads[writer] = time.time()
        return writer

    def used(self) -> int:
        return sum(len(data) for data, _ in self.data.values())

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        if key not in self.data:
            raise StorageError("cannot open object: no such object")
        data = self.data[key][0][start:end]
        for i in range(0, len(data), READ_CHUNK):
            await asyncio.sleep(0)  # a real backend yields to the event loop between chunks
            yield data[i : i + READ_CHUNK]

    async def delete(self, key: str) -> None:
        check_key(key)
        self.data.pop(key, None)

    async def objects(self) -> AsyncIterator[StoredObject]:
        for key, (data, modified) in list(self.data.items()):
            yield StoredObject(key, len(data), modified)

    async def remove_stale_uploads(self, older_than: float) -> int:
        stale = [w for w, started in self.uploads.items() if started < older_than]
        for writer in stale:
            await writer.abort()
        return len(stale)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryWriter:
    """Keeps the chunks it is given (copied: a caller may reuse its buffer) until commit."""

    def __init__(self, store: MemoryStore, key: str):
        self.store = store
        self.key = key
        self.chunks: list[bytes] = []
        self.sha = hashlib.sha256()

    async def write(self, data: bytes | memoryview) -> None:
        if self not in self.store.uploads:
            raise StorageError("storage write failed: the write was aborted")
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.sha.update(chunk)

    async def commit(self) -> bytes:
        data = b"".join(self.chunks)
        capacity = self.store.capacity
        if capacity is not None and self.store.used() + len(data) > capacity:
            await self.abort()
            raise StorageFull("no space left for the object")
        await self.abort()  # no longer unfinished
        self.store.data[self.key] = (data, time.time())
        return self.sha.digest()

    async def abort(self) -> None:
        self.chunks = []
        self.store.uploads.pop(self, None)
