"""Index deletes: a study, series or instance resource (the DELETE transaction), and the sweep's check.

An object is deleted from storage only after the index no longer references it: ``delete``
returns the keys to remove after its transaction commits, and the sweep asks
``referenced_keys`` before removing an object that a crash left behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicomweb_server.db import arrival
from dicomweb_server.db.pool import Connection, require_transaction
from dicomweb_server.db.retrieve import resource_scope


async def delete(
    conn: Connection, tenant: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[str] | None:
    """Remove a study, series or instance from the index, in the caller's transaction.

    Returns the object keys that are no longer referenced (the caller deletes them
    after this commits; the sweep removes any a crash leaves behind), or None when
    the resource does not exist.  The study row is locked first, the same order as
    ingest, and the aggregates are brought down under that lock.
    """
    scope, args = resource_scope(study_uid, series_uid, sop_uid)
    require_transaction(conn)
    study_pk = await conn.fetchval(
        "SELECT pk FROM study WHERE tenant = $1 AND study_uid = $2 FOR UPDATE", tenant, study_uid
    )
    if study_pk is None:
        return None
    rows = await conn.fetch(
        f"DELETE FROM instance i USING study st, series se WHERE st.pk = i.study_pk "
        f"AND se.pk = i.series_pk AND st.tenant = $1 AND {scope} "
        "RETURNING i.object_key, i.series_pk, i.sop_uid, i.size",
        tenant,
        *args,
    )
    if not rows:
        return None
    removed: dict[int, int] = {}
    for row in rows:
        removed[row["series_pk"]] = removed.get(row["series_pk"], 0) + 1
    await conn.execute(
        "UPDATE series s SET num_instances = s.num_instances - v.n "
        "FROM unnest($1::bigint[], $2::int[]) AS v(pk, n) WHERE s.pk = v.pk",
        list(removed),
        list(removed.values()),
    )
    await conn.execute("DELETE FROM series WHERE study_pk = $1 AND num_instances <= 0", study_pk)
    await conn.execute(
        "UPDATE study s SET num_instances = s.num_instances - $2, "
        "num_series = (SELECT count(*) FROM series WHERE study_pk = s.pk), "
        "modalities = ARRAY(SELECT DISTINCT modality FROM series "
        "WHERE study_pk = s.pk AND modality IS NOT NULL ORDER BY modality), updated_at = now() "
        "WHERE s.pk = $1",
        study_pk,
        len(rows),
    )
    await conn.execute("DELETE FROM study WHERE pk = $1 AND num_instances <= 0", study_pk)
    await arrival.forget(
        conn, tenant, study_uid, [row["sop_uid"] for row in rows], sum(row["size"] for row in rows)
    )
    return [row["object_key"] for row in rows]


async def referenced_keys(conn: Connection, keys: Sequence[str]) -> set[str]:
    """The subset of ``keys`` that a committed instance row references."""
    rows = await conn.fetch("SELECT object_key FROM instance WHERE object_key = ANY($1::text[])", list(keys))
    return {row["object_key"] for row in rows}
