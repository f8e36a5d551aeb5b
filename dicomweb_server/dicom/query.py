"""QIDO-RS queries (PS3.18 §10.6, PS3.4 C.2.2.2 matching): a query string → a typed ``Query``.  Pure.

``parse_query`` turns a raw query string into a ``Query`` or raises ``BadRequest``
with a readable message.  The matching attributes are the ``ATTRIBUTES`` table; which
index column holds each, and the SQL, are ``db/search.py``'s: this module knows the
standard, not the schema.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomweb_server.dicom import index as dicom_index
from dicomweb_server.dicom.index import fold
from dicomweb_server.dicom.resources import SEGMENTS, Level, is_valid_uid
from dicomweb_server.errors import BadRequest


@dataclass(frozen=True)
class Attr:
    """A matching attribute: its tag, keyword, VR and IE level (PS3.18 Table 10.6.1-5)."""

    tag: str
    keyword: str
    vr: str
    level: Level
    array: bool = False  # multi-valued in the index: a value matches any one of them


# PS3.18 Table 10.6.1-5 (required matching attributes) plus a few that integrators ask for.
ATTRIBUTES = [
    Attr("00080020", "StudyDate", "DA", Level.STUDY),
    Attr("00080030", "StudyTime", "TM", Level.STUDY),
    Attr("00080050", "AccessionNumber", "SH", Level.STUDY),
    Attr("00080061", "ModalitiesInStudy", "CS", Level.STUDY, array=True),
    Attr("00080090", "ReferringPhysicianName", "PN", Level.STUDY),
    Attr("00100010", "PatientName", "PN", Level.STUDY),
    Attr("00100020", "PatientID", "LO", Level.STUDY),
    Attr("00100030", "PatientBirthDate", "DA", Level.STUDY),
    Attr("00100040", "PatientSex", "CS", Level.STUDY),
    Attr("0020000D", "StudyInstanceUID", "UI", Level.STUDY),
    Attr("00200010", "StudyID", "SH", Level.STUDY),
    Attr("00081030", "StudyDescription", "LO", Level.STUDY),
    Attr("00080060", "Modality", "CS", Level.SERIES),
    Attr("0020000E", "SeriesInstanceUID", "UI", Level.SERIES),
    Attr("00200011", "SeriesNumber", "IS", Level.SERIES),
    Attr("0008103E", "SeriesDescription", "LO", Level.SERIES),
    Attr("00400244", "PerformedProcedureStepStartDate", "DA", Level.SERIES),
    Attr("00400245", "PerformedProcedureStepStartTime", "TM", Level.SERIES),
    Attr("00080016", "SOPClassUID", "UI", Level.INSTANCE),
    Attr("00080018", "SOPInstanceUID", "UI", Level.INSTANCE),
    Attr("00200013", "InstanceNumber", "IS", Level.INSTANCE),
]
# Sequence matching (PS3.4 C.2.2.2.6): RequestAttributesSequence items, one index array per key.
SEQUENCE_ATTRIBUTES = {
    ("00400275", "00400009"): Attr("00400009", "ScheduledProcedureStepID", "SH", Level.SERIES, array=True),
    ("00400275", "00401001"): Attr("00401001", "RequestedProcedureID", "SH", Level.SERIES, array=True),
}
_BY_TAG = {a.tag: a for a in ATTRIBUTES}
REQUEST_ATTRIBUTES = "00400275"


@dataclass(frozen=True)
class Resource:
    """A QIDO resource: the level it returns and the IE levels it accepts for matching (Table 10.6.1-4)."""

    level: Level
    accepts: frozenset[Level]


# PS3.18 Table 10.6.1-4: the six search resources, by the level each returns and the IE levels
# whose keys it matches on (a scoped resource's higher levels are fixed by its path).
STUDIES = Resource(Level.STUDY, frozenset({Level.STUDY}))
SERIES = Resource(Level.SERIES, frozenset({Level.STUDY, Level.SERIES}))
INSTANCES = Resource(Level.INSTANCE, frozenset({Level.STUDY, Level.SERIES, Level.INSTANCE}))
STUDY_SERIES = Resource(Level.SERIES, frozenset({Level.SERIES}))
STUDY_INSTANCES = Resource(Level.INSTANCE, frozenset({Level.SERIES, Level.INSTANCE}))
SERIES_INSTANCES = Resource(Level.INSTANCE, frozenset({Level.INSTANCE}))


@dataclass(frozen=True)
class Condition:
    """One matching key.  kind: single | list | wildcard | range | fuzzy."""

    attr: Attr
    kind: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    conditions: tuple[Condition, ...] = ()
    returned: frozenset[str] = frozenset()  # tags asked for by a matching key or includefield
    include_all: bool = False
    limit: int = 100
    offset: int = 0


def _pairs(raw: str) -> list[tuple[str, str]]:
    """Split a raw query string; percent-decode as UTF-8.

    ``+`` decodes to a space, as HTML forms and dicomweb-client (quote_plus) send it;
    a literal plus travels as ``%2B``.
    """
    out = []
    for item in raw.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        try:
            pair = unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(f"Query parameter {key!r} is not valid percent-encoded UTF-8") from None
        if _CONTROL.search(pair[0] + pair[1]):
            raise BadRequest(
                f"Query parameter {key!r} contains a control character (such as NUL or a line break); "
                "DICOM query values cannot hold them"
            )
        out.append(pair)
    return out


# C0 controls, DEL and C1 controls: no DICOM text value in a query holds one (ESC sequences of
# ISO 2022 character sets do not travel in a UTF-8 query string).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def resolve(attribute_id: str) -> str:
    """A keyword or an 8-hex-digit tag → the tag, or BadRequest."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", attribute_id):
        tag = attribute_id.upper()
        if keyword_for_tag(int(tag, 16)) or int(tag[:4], 16) % 2:
            return tag
        raise BadRequest(f"Unknown attribute tag {attribute_id}")
    tag_int = tag_for_keyword(attribute_id)
    if tag_int is None:
        raise BadRequest(f"Unknown attribute {attribute_id!r}: use a DICOM keyword or an 8-digit hex tag")
    return f"{tag_int:08X}"


def _integer(name: str, value: str, default: int, cap: int | None = None) -> int:
    if value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,12}", value):  # ASCII digits only ("\\d" also matches "٣")
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    number = int(value)
    if cap is not None and number > cap:
        raise BadRequest(f"{name} must be at most {cap}, got {number}")
    return number


def parse_query(
    raw: str,
    resource: Resource,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    max_limit: int = 1000,
    max_offset: int = 1_000_000,
    max_uids: int = 1000,
) -> Query:
    """Parse a QIDO query string for ``resource``; any problem is a 400 with a readable message."""
    conditions: list[Condition] = []
    returned: set[str] = set()
    include_all = fuzzy = False
    limit, offset = max_limit, 0
    seen: set[str] = set()
    for key, value in _pairs(raw):
        name = key.strip()
        if name in _ONCE:
            if name in seen:
                raise BadRequest(f"{name} is given more than once")
            seen.add(name)
        if name == "limit":
            limit = _integer("limit", value, max_limit, max_limit)
            if limit == 0:
                raise BadRequest("limit must be at least 1")
        elif name == "offset":
            offset = _integer("offset", value, 0, max_offset)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadRequest("fuzzymatching must be 'true' or 'false'")
            fuzzy = value == "true"
        elif name in NEGOTIATION:
            continue  # read by the handler's content negotiation (PS3.18 §8.3.3.1), not a match
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item == "all":
                    include_all = True
                elif item:
                    returned.add(_include_tag(item))
                else:
                    raise BadRequest("includefield has an empty attribute")
        else:
            path = ".".join(resolve(part) for part in name.split("."))
            if path in seen:
                raise BadRequest(f"Attribute {name} is given more than once")
            seen.add(path)
            if path == REQUEST_ATTRIBUTES:
                if value:
                    raise BadRequest(
                        "Match on RequestAttributesSequence items, e.g. "
                        "RequestAttributesSequence.RequestedProcedureID=value"
                    )
                returned.add(path)  # universal matching on the sequence: a return key
                continue
            attr, tags = _match_attribute(name, resource)
            returned.update(tags)
            condition = _condition(attr, value, max_uids)
            if condition is not None:
                conditions.append(condition)
    if fuzzy:
        conditions = [
            Condition(c.attr, "fuzzy", c.values) if c.attr.vr == "PN" and c.kind == "single" else c
            for c in conditions
        ]
    combined = _combine_datetime(conditions)
    for condition in combined:
        _check_order(condition)
    return Query(
        level=resource.level,
        study_uid=study_uid,
        series_uid=series_uid,
        conditions=tuple(combined),
        returned=frozenset(returned),
        include_all=include_all,
        limit=limit,
        offset=offset,
    )


_ONCE = ("limit", "offset", "fuzzymatching")
# PS3.18 Table 8.3.3.1-2: the ``accept`` query parameter overrides the Accept header.
NEGOTIATION = frozenset({"accept"})


def _include_tag(item: str) -> str:
    """includefield may name a sequence path; the whole top-level attribute is returned.

    Every component but the last must be a sequence (SQ): ``ReferencedSeriesSequence.SeriesInstanceUID``
    is a path, ``PatientName.PatientID`` and ``PatientName.`` are not.
    """
    parts = item.split(".")
    if any(not part.strip() for part in parts):
        raise BadRequest(f"includefield {item!r} has an empty attribute in its path")
    tags = [resolve(part.strip()) for part in parts]
    for part, tag in zip(parts[:-1], tags[:-1], strict=False):
        if _vr(tag) != "SQ":
            raise BadRequest(
                f"includefield {item!r}: {part} is not a sequence, so nothing can be nested in it"
            )
    return tags[0]


def _vr(tag: str) -> str | None:
    """The dictionary VR of a tag, None for a private or unknown one."""
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None


def _match_attribute(name: str, resource: Resource) -> tuple[Attr, list[str]]:
    parts = name.split(".")
    if len(parts) == 2:
        path = (resolve(parts[0]), resolve(parts[1]))
        attr = SEQUENCE_ATTRIBUTES.get(path)
        if attr is None:
            raise BadRequest(f"Sequence matching on {name} is not supported")
        tags = [path[0]]
    elif len(parts) == 1:
        tag = resolve(name)
        attr = _BY_TAG.get(tag)
        if attr is None:
            raise BadRequest(
                f"Matching on {name} is not supported; see CONFORMANCE.md for the attribute list"
            )
        tags = [tag]
    else:
        raise BadRequest(f"Attribute path {name} is too deep")
    if attr.level not in resource.accepts and attr.level > min(resource.accepts):
        level = attr.level.name.lower()
        searched = SEGMENTS[resource.level]
        raise BadRequest(
            f"{attr.keyword} is {'an' if level[0] == 'i' else 'a'} {level}-level attribute; "
            f"this resource searches {searched} and cannot match on it"
        )
    return attr, tags


def _condition(attr: Attr, value: str, max_uids: int) -> Condition | None:
    """PS3.4 C.2.2.2: which kind of matching a value asks for."""
    if value == "" or value == "*":
        return None  # universal matching: a return key only
    if attr.vr == "UI":
        uids = [u.strip() for u in re.split(r"[,\\]", value)]
        if len(uids) > max_uids:
            raise BadRequest(f"At most {max_uids} UIDs may be listed")
        for uid in uids:
            if not is_valid_uid(uid):
                raise BadRequest(f"{attr.keyword}: {uid!r} is not a valid UID")
        return Condition(attr, "list" if len(uids) > 1 else "single", tuple(uids))
    if attr.vr in ("DA", "TM"):
        if value.count("-") > 1:
            raise BadRequest(_not_date_or_time(attr, value))
        if "-" in value:
            low, _, high = value.partition("-")
            if not low.strip() and not high.strip():
                raise BadRequest(f"{attr.keyword}: a range needs at least one end")
            return Condition(
                attr, "range", (_normal(attr, low, value), _normal(attr, high, value, upper=True))
            )
        return Condition(attr, "single", (_normal(attr, value, value),))
    if attr.vr == "IS":  # ASCII digits only: "\d" would also accept "٣" (Arabic-Indic three)
        if not re.fullmatch(r"[+-]?[0-9]{1,10}", value.strip()) or not -(2**31) <= int(value) < 2**31:
            raise BadRequest(f"{attr.keyword} must be an integer (32-bit, ASCII digits), got {value!r}")
        return Condition(attr, "single", (str(int(value)),))
    if attr.array and attr.vr == "CS" and ("\\" in value or "," in value):
        return Condition(attr, "list", tuple(v for v in re.split(r"[,\\]", value) if v))
    text = fold(value) if attr.vr == "PN" else value
    assert text is not None
    if "*" in text or "?" in text:
        return Condition(attr, "wildcard", (text,))
    return Condition(attr, "single", (text,))


def _not_date_or_time(attr: Attr, given: str) -> str:
    if attr.vr == "DA":
        return (
            f"{attr.keyword}: {given!r} is not a DICOM date (YYYYMMDD) or range (YYYYMMDD-YYYYMMDD); "
            "an open range leaves one end empty (YYYYMMDD- or -YYYYMMDD)"
        )
    return (
        f"{attr.keyword}: {given!r} is not a DICOM time (HHMMSS.FFFFFF; HH, HHMM and HHMMSS too) "
        "or range (HHMMSS-HHMMSS)"
    )


def _normal(attr: Attr, value: str, given: str, *, upper: bool = False) -> str:
    """DA → YYYYMMDD; TM → HHMMSS.FFFFFF (an open range end stays empty).  ``given``: the whole value."""
    value = value.strip()
    if value == "":
        return ""
    if not value.isascii():  # the dicom parsers' "\d" would take other scripts' digits
        raise BadRequest(_not_date_or_time(attr, given))
    if attr.vr == "DA":
        compact = dicom_index.normal_date(value)
        try:
            dt.datetime.strptime(compact or "", "%Y%m%d")
        except ValueError:
            raise BadRequest(_not_date_or_time(attr, given)) from None
        assert compact is not None
        return compact
    normal = dicom_index.normal_time(value, upper=upper)
    if normal is None:
        raise BadRequest(_not_date_or_time(attr, given))
    return normal


def _check_order(c: Condition) -> None:
    """A range that ends before it starts matches nothing: almost always swapped ends, so a 400."""
    if c.kind == "range":
        low, high = c.values
    elif c.kind == "datetime":
        if not c.values[0] or not c.values[2]:
            return
        low = c.values[0] + (c.values[1] or "000000.000000")
        high = c.values[2] + (c.values[3] or "235959.999999")
    else:
        return
    if low and high and low > high:
        raise BadRequest(
            f"{c.attr.keyword}: the range ends before it starts ({low} > {high}); "
            "write the earlier value first"
        )


def _combine_datetime(conditions: list[Condition]) -> list[Condition]:
    """PS3.4 C.2.2.2.5.1: a date range plus a time range on one pair match as one date-time range."""
    pairs = {"00080020": "00080030", "00400244": "00400245"}
    by_tag = {c.attr.tag: c for c in conditions}
    out = list(conditions)
    for date_tag, time_tag in pairs.items():
        d, t = by_tag.get(date_tag), by_tag.get(time_tag)
        if d and t and d.kind == "range" and t.kind == "range":
            out.remove(d)
            out.remove(t)
            out.append(
                Condition(
                    d.attr, "datetime", (d.values[0], t.values[0], d.values[1], t.values[1], t.attr.tag)
                )
            )
    return out
