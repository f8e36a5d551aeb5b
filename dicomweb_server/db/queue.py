"""SQL over the durable queue's table (pgqueuer's, migration 0009), for the reconciler: which
deduplication keys have an entry queued or running.  Enqueueing and claiming are pgqueuer's own
(jobs/queue.py)."""

from __future__ import annotations

from collections.abc import Sequence

from dicomweb_server.db.pool import Connection


async def live_keys(conn: Connection, keys: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT dedupe_key FROM pgqueuer WHERE dedupe_key = ANY($1::text[]) "
        "AND status IN ('queued', 'picked')",
        list(keys),
    )
    return {r["dedupe_key"] for r in rows}
