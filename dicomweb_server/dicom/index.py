"""Index attributes of one instance, read from its DICOM JSON (decoded once, at ingest): pure.

The study, series and instance columns the index searches on (db.STUDY_COLUMNS and the rest),
their normal forms (DA as YYYYMMDD, TM as fixed-width HHMMSS.FFFFFF, PN folded for matching),
and the attributes kept with the study and with the series for QIDO's answers.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson


def first(meta: dict[str, Any], tag: str) -> Any:
    """The first value of a top-level attribute in DICOM JSON, or None."""
    elem = meta.get(tag)
    if not elem:
        return None
    values = elem.get("Value")
    return values[0] if values else None


def person_name(meta: dict[str, Any], tag: str) -> str | None:
    """The PN value as its DICOM string form ("Alphabetic=Ideographic=Phonetic")."""
    value = first(meta, tag)
    if not isinstance(value, dict):
        return None
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups) or None


def fold(text: str | None) -> str | None:
    """Case- and accent-insensitive form used for PN matching (documented in CONFORMANCE.md)."""
    if text is None:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


# PS3.3 Patient and Study IE attributes kept with the study, and Series/Equipment IE
# attributes kept with the series (returned by QIDO; the first instance provides them).
STUDY_TAGS = frozenset(
    [
        "00080005",
        "00080020",
        "00080030",
        "00080050",
        "00080051",
        "00080056",
        "00080061",
        "00080090",
        "00080201",
        "00081030",
        "00081032",
        "00081060",
        "00100010",
        "00100020",
        "00100021",
        "00100030",
        "00100032",
        "00100040",
        "00101010",
        "00101020",
        "00101030",
        "00102160",
        "00104000",
        "0020000D",
        "00200010",
        "00321060",
    ]
)
SERIES_TAGS = frozenset(
    [
        "00080005",
        "00080021",
        "00080031",
        "00080060",
        "00080070",
        "00080080",
        "00081010",
        "0008103E",
        "00081070",
        "00081090",
        "00080201",
        "00180015",
        "00185100",
        "0020000E",
        "00200011",
        "00200060",
        "00400244",
        "00400245",
        "00400275",
    ]
)


def normal_time(value: str, *, upper: bool = False) -> str | None:
    """TM as fixed-width HHMMSS.FFFFFF, which sorts correctly; a partial upper bound covers its span.

    Also accepts the ACR-NEMA HH:MM:SS form.  None when the value is not a time.
    """
    m = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?", value.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59 or int(m.group(3) or 0) > 60:
        return None
    fill = "9" if upper else "0"
    hh, mm, ss, frac = m.group(1), m.group(2), m.group(3), m.group(4)
    mm = mm or ("59" if upper else "00")
    ss = ss or ("59" if upper else "00")
    return f"{hh}{mm}{ss}.{(frac or '').ljust(6, fill)}"


def normal_date(value: str | None) -> str | None:
    """DA as YYYYMMDD (also from the ACR-NEMA YYYY.MM.DD form); None when it is not a date."""
    if not value:
        return None
    compact = value.replace(".", "") if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", value) else value
    return compact if re.fullmatch(r"\d{8}", compact) else None


def _time(value: Any) -> str | None:
    return normal_time(value) if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and -(2**31) <= value < 2**31:
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def index_values(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Study, series and instance index columns (db.STUDY_COLUMNS etc.) from an instance's DICOM JSON."""
    patient = person_name(meta, "00100010")
    referring = person_name(meta, "00080090")
    study = {
        "study_date": normal_date(_str(first(meta, "00080020"))),
        "study_time": _time(first(meta, "00080030")),
        "accession_number": _str(first(meta, "00080050")),
        "referring_physician": referring,
        "referring_physician_folded": fold(referring),
        "patient_name": patient,
        "patient_name_folded": fold(patient),
        "patient_id": _str(first(meta, "00100020")),
        "patient_birth_date": normal_date(_str(first(meta, "00100030"))),
        "patient_sex": _str(first(meta, "00100040")),
        "study_id": _str(first(meta, "00200010")),
        "study_description": _str(first(meta, "00081030")),
        "timezone_offset": _str(first(meta, "00080201")),
    }
    requests = (meta.get("00400275") or {}).get("Value") or []
    series = {
        "modality": _str(first(meta, "00080060")),
        "series_number": _int(first(meta, "00200011")),
        "series_description": _str(first(meta, "0008103E")),
        "pps_start_date": normal_date(_str(first(meta, "00400244"))),
        "pps_start_time": _time(first(meta, "00400245")),
        "scheduled_step_ids": _json_list([_str(first(item, "00400009")) for item in requests]),
        "requested_procedure_ids": _json_list([_str(first(item, "00401001")) for item in requests]),
        "timezone_offset": _str(first(meta, "00080201")),
    }
    instance = {
        "sop_class_uid": _str(first(meta, "00080016")),
        "instance_number": _int(first(meta, "00200013")),
        "rows": _int(first(meta, "00280010")),
        "columns": _int(first(meta, "00280011")),
        "bits_allocated": _int(first(meta, "00280100")),
        "number_of_frames": _int(first(meta, "00280008")),
    }
    return study, series, instance


def _json_list(values: list[str | None]) -> str:
    return orjson.dumps([v for v in values if v]).decode()


def subset(meta: dict[str, Any], tags: frozenset[str]) -> dict[str, Any]:
    return {tag: value for tag, value in meta.items() if tag in tags}
