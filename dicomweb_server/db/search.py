"""QIDO-RS queries, second half: a parsed ``Query`` → parameterised SQL, and the keyset page cache.

Pure functions of the query model (``dicom.query``) and the index schema: column names come
only from ``COLUMNS``; every value is a ``$n`` parameter, LIKE metacharacters escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomweb_server.cache import MISSING, TTLCache
from dicomweb_server.dicom.query import Attr, Condition, Query
from dicomweb_server.dicom.resources import INSTANCE_METADATA, Level

# The index column that holds each matching attribute (dicom.query.ATTRIBUTES and its sequence
# attributes), by tag.  Column names go into SQL text: only from this table, never from a request.
COLUMNS = {
    "00080020": "st.study_date",
    "00080030": "st.study_time",
    "00080050": "st.accession_number",
    "00080061": "st.modalities",
    "00080090": "st.referring_physician_folded",
    "00100010": "st.patient_name_folded",
    "00100020": "st.patient_id",
    "00100030": "st.patient_birth_date",
    "00100040": "st.patient_sex",
    "0020000D": "st.study_uid",
    "00200010": "st.study_id",
    "00081030": "st.study_description",
    "00080060": "se.modality",
    "0020000E": "se.series_uid",
    "00200011": "se.series_number",
    "0008103E": "se.series_description",
    "00400244": "se.pps_start_date",
    "00400245": "se.pps_start_time",
    "00080016": "i.sop_class_uid",
    "00080018": "i.sop_uid",
    "00200013": "i.instance_number",
    "00400009": "se.scheduled_step_ids",
    "00401001": "se.requested_procedure_ids",
}


@dataclass(frozen=True)
class Statements:
    """A page statement and its count statement, with their parameters (``to_sql`` makes them)."""

    page: str
    page_args: list[object]
    count: str
    count_args: list[object]


def _like(pattern: str) -> str:
    """DICOM wildcards → LIKE, with LIKE's own metacharacters escaped first."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


class _Args:
    def __init__(self, first: object):
        self.values: list[object] = [first]

    def add(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _where(c: Condition, args: _Args) -> str:
    col, a = COLUMNS[c.attr.tag], c.attr
    if a.vr == "PN" and c.kind in ("single", "wildcard") and "=" not in c.values[0]:
        # A name without '=' matches any one of its component groups (alphabetic, ideographic,
        # phonetic); a single value has no wildcard, so its LIKE pattern is the escaped literal.
        p = args.add(_like(c.values[0]))
        groups = (p, f"{p} || '=%'", f"'%=' || {p}", f"'%=' || {p} || '=%'")
        return "(" + " OR ".join(f"{col} LIKE {g}" for g in groups) + ")"
    if c.kind == "single":
        if a.array:  # containment can use the GIN index
            return f"{col} @> ARRAY[{args.add(c.values[0])}]::text[]"
        return f"{col} = {args.add(_typed(a, c.values[0]))}"
    if c.kind == "list":
        values = list(c.values)
        return (
            f"{col} && {args.add(values)}::text[]" if a.array else f"{col} = ANY({args.add(values)}::text[])"
        )
    if c.kind == "wildcard":
        pattern = args.add(_like(c.values[0]))
        if a.array:
            return f"EXISTS (SELECT 1 FROM unnest({col}) AS v WHERE v LIKE {pattern})"
        return f"{col} LIKE {pattern}"
    if c.kind == "fuzzy":
        # Every word of the query starts some component of the name (case and accents folded).
        words = [w for w in re.split(r"[\s^=,]+", c.values[0]) if w]
        return " AND ".join(f"{col} ~ {args.add(_WORD_START + re.escape(w))}" for w in words) or "TRUE"
    if c.kind == "range":
        low, high = c.values
        parts = []
        if low:
            parts.append(f"{col} >= {args.add(low)}")
        if high:
            parts.append(f"{col} <= {args.add(high)}")
        return " AND ".join(parts)
    if c.kind == "datetime":
        d_low, t_low, d_high, t_high, time_tag = c.values
        time_col = COLUMNS[time_tag]
        stamp = f"({col} || coalesce({time_col}, ''))"
        parts = []
        if d_low:
            parts.append(f"{stamp} >= {args.add(d_low + (t_low or '000000.000000'))}")
        if d_high:
            parts.append(f"{stamp} <= {args.add(d_high + (t_high or '235959.999999'))}")
        return " AND ".join(parts) or "TRUE"
    raise AssertionError(c.kind)


_WORD_START = r"(^|[\^= ])"  # a PN component starts at the beginning, after ^ or =, or after a space


def _typed(attr: Attr, value: str) -> object:
    return int(value) if attr.vr == "IS" else value


_SELECT = {
    Level.STUDY: "st.pk, st.study_uid, st.attrs::text AS study_attrs, st.modalities, st.num_series, "
    "st.num_instances AS study_instances",
    Level.SERIES: "se.pk, st.study_uid, st.attrs::text AS study_attrs, st.modalities, st.num_series, "
    "st.num_instances AS study_instances, se.series_uid, se.attrs::text AS series_attrs, se.num_instances",
    Level.INSTANCE: "i.pk, st.study_uid, st.attrs::text AS study_attrs, st.modalities, st.num_series, "
    "st.num_instances AS study_instances, se.series_uid, se.attrs::text AS series_attrs, "
    "se.num_instances, i.sop_uid, i.transfer_syntax_uid, {metadata} AS metadata",
}
_FROM = {
    Level.STUDY: "study st",
    Level.SERIES: "series se JOIN study st ON st.pk = se.study_pk",
    Level.INSTANCE: "instance i JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = i.study_pk",
}
_KEY = {Level.STUDY: "st", Level.SERIES: "se", Level.INSTANCE: "i"}


def _count_from(level: Level, filters: str) -> str:
    """The count joins only the tables its conditions name (the page joins all, for the results)."""
    tables = [{Level.STUDY: "study st", Level.SERIES: "series se", Level.INSTANCE: "instance i"}[level]]
    if level == Level.INSTANCE and "se." in filters:
        tables.append("JOIN series se ON se.pk = i.series_pk")
    if level > Level.STUDY and "st." in filters:
        tables.append(f"JOIN study st ON st.pk = {'se' if level == Level.SERIES else 'i'}.study_pk")
    return " ".join(tables)


def to_sql(query: Query, tenant: str, *, after_pk: int | None = None) -> Statements:
    """The page statement (one row more than the limit) and the count statement for ``query``.

    ``after_pk`` turns the offset into a keyset condition (deep paging stays an index range scan).
    """
    args = _Args(tenant)
    key = _KEY[query.level]
    where = [f"{key}.tenant = $1"]
    if query.study_uid is not None:
        scope = f"(SELECT pk FROM study WHERE tenant = $1 AND study_uid = {args.add(query.study_uid)})"
        where.append(f"{'se' if query.level == Level.SERIES else 'i'}.study_pk = {scope}")
    if query.series_uid is not None:
        scope = f"(SELECT pk FROM series WHERE tenant = $1 AND series_uid = {args.add(query.series_uid)})"
        where.append(f"i.series_pk = {scope}")
    where += [_where(c, args) for c in query.conditions]
    filters = " AND ".join(where)
    count = Statements(
        "", [], f"SELECT count(*) FROM {_count_from(query.level, filters)} WHERE {filters}", list(args.values)
    )
    metadata = "i.metadata::text"
    if query.level == Level.INSTANCE and not query.include_all:
        wanted = sorted(INSTANCE_METADATA | query.returned)
        metadata = (
            "(SELECT jsonb_object_agg(k, v) FROM jsonb_each(i.metadata) AS m(k, v) "
            f"WHERE k = ANY({args.add(wanted)}::text[]))::text"
        )
    page_filters = filters
    offset = query.offset
    if after_pk is not None:
        page_filters += f" AND {key}.pk > {args.add(after_pk)}"
        offset = 0
    select = _SELECT[query.level].format(metadata=metadata)
    sql = (
        f"SELECT {select} FROM {_FROM[query.level]} WHERE {page_filters} "
        f"ORDER BY {key}.pk LIMIT {args.add(query.limit + 1)} OFFSET {args.add(offset)}"
    )
    return Statements(sql, args.values, count.count, count.count_args)


def signature(query: Query, tenant: str) -> tuple[object, ...]:
    """What identifies a result list apart from its page: the key of the keyset cache."""
    return (tenant, query.level, query.study_uid, query.series_uid, query.conditions)


class PageCache:
    """Where earlier pages of a result list ended: ``offset`` → last primary key (an LRU).

    QIDO pages by offset; a client paging through a long list asks for offset
    0, L, 2L, … and each later page starts right after the previous one's last
    row, so the offset becomes an index range condition instead of a scan.
    """

    def __init__(self, size: int = 10_000):
        self._entries: TTLCache[tuple[object, ...], int] = TTLCache(size)

    def get(self, sig: tuple[object, ...], offset: int) -> int | None:
        pk = self._entries.get((*sig, offset))
        return None if pk is MISSING else pk

    def put(self, sig: tuple[object, ...], offset: int, pk: int) -> None:
        self._entries.put((*sig, offset), pk)

    def clear(self) -> None:
        """Deletes shift offsets: forget every boundary."""
        self._entries.clear()


# -- the page query (from the old db.py) ------------------------------------------------------
# Imported here, not at the top, only while another change edits the generator above; move them
# up when both have landed.
from typing import Any  # noqa: E402

from dicomweb_server.db.pool import Connection  # noqa: E402


async def search_page(
    conn: Connection, statements: Statements, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A QIDO page, and the total count when more rows remain than the page holds."""
    rows = await conn.fetch(statements.page, *statements.page_args)
    total = None
    if len(rows) > limit:
        rows = rows[:limit]
        total = await conn.fetchval(statements.count, *statements.count_args)
    return [dict(r) for r in rows], total
