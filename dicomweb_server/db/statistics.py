"""Planner statistics for the index tables, kept fresh between autovacuum's visits."""

from __future__ import annotations

from dicomweb_server.db.pool import Connection

_INDEX_TABLES = ("study", "series", "instance")


async def analyze_if_stale(conn: Connection) -> list[str]:
    """ANALYZE the index tables whose statistics lag far behind their contents.

    Autovacuum looks at a database once a minute; a bulk ingest followed by searches
    inside that minute would otherwise be planned with no statistics at all.
    """
    stale = await conn.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) "
        "AND n_mod_since_analyze > 500 + 0.1 * n_live_tup",
        list(_INDEX_TABLES),
    )
    names = [row["relname"] for row in stale if row["relname"] in _INDEX_TABLES]
    for name in names:
        await conn.execute(f"ANALYZE {name}")  # a name from the fixed list above
    return names
