"""Garbage collection of objects that no committed index row references (invariant I3).

An object is written before its index row commits, so a crash or a failed
request can leave one behind.  After ``grace`` seconds such an object can no
longer belong to a request in flight and is removed, as are unfinished uploads
(temp files, S3 multipart uploads).  A referenced object is never touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from dicomweb_server.db.delete import referenced_keys
from dicomweb_server.db.pool import Pool, connection
from dicomweb_server.storage.base import ObjectStore

log = logging.getLogger(__name__)
BATCH = 1000


@dataclass(frozen=True)
class SweepReport:
    scanned: int
    removed_objects: int
    removed_uploads: int


async def sweep(pool: Pool, store: ObjectStore, grace: float, now: float | None = None) -> SweepReport:
    """Remove unreferenced objects and stale uploads older than ``grace`` seconds."""
    cutoff = (time.time() if now is None else now) - grace
    scanned = removed = 0
    batch: list[str] = []
    async for obj in store.objects():
        scanned += 1
        if obj.modified < cutoff:
            batch.append(obj.key)
        if len(batch) >= BATCH:
            removed += await _remove_unreferenced(pool, store, batch)
            batch = []
    if batch:
        removed += await _remove_unreferenced(pool, store, batch)
    uploads = await store.remove_stale_uploads(cutoff)
    report = SweepReport(scanned, removed, uploads)
    log.info(
        "sweep done", extra={"event": "sweep", "scanned": scanned, "removed": removed, "uploads": uploads}
    )
    return report


async def _remove_unreferenced(pool: Pool, store: ObjectStore, keys: list[str]) -> int:
    async with connection(pool) as conn:  # released before the objects are deleted
        referenced = await referenced_keys(conn, keys)
    orphans = [k for k in keys if k not in referenced]
    for key in orphans:
        await store.delete(key)
    return len(orphans)
