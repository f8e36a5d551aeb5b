"""QIDO-RS results (PS3.18 §10.6.3): DICOM JSON objects built from the index, never from objects.  Pure."""

from __future__ import annotations

from typing import Any

import orjson

from dicomweb_server.dicom.query import Query
from dicomweb_server.dicom.resources import (
    CONDITIONAL,
    INSTANCE_RETURN,
    SERIES_RETURN,
    STUDY_RETURN,
    Level,
    path,
)

# Table 10.6.3-5 rows every instance result carries (the conditional ones only when stored).
_INSTANCE_ALWAYS = {tag: vr for tag, vr in INSTANCE_RETURN.items() if tag not in CONDITIONAL}


# ---------------------------------------------------------------------------
# Results (PS3.18 §10.6.3.3): built from the index, never from objects.


def _value(vr: str, values: list[object]) -> dict[str, object]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _pick(attrs: dict[str, object], wanted: set[str] | None) -> dict[str, object]:
    return {k: v for k, v in attrs.items() if wanted is None or k in wanted}


def result(query: Query, row: dict[str, Any], base: str) -> dict[str, object]:
    """One DICOM JSON result object for ``row`` of ``to_sql``'s page statement."""
    wanted = None if query.include_all else set(query.returned) | CONDITIONAL
    study_url = base + path(row["study_uid"])
    out: dict[str, object] = {tag: {"vr": vr} for tag, vr in STUDY_RETURN.items()}
    out.update(
        _pick(orjson.loads(row["study_attrs"]), None if wanted is None else wanted | set(STUDY_RETURN))
    )
    modalities = list(row["modalities"] or [])
    out["00080061"] = _value("CS", modalities)
    out["00201206"] = _value("IS", [row["num_series"]])
    out["00201208"] = _value("IS", [row["study_instances"]])
    out["00080056"] = _value("CS", ["ONLINE"])
    out["00081190"] = _value("UR", [study_url])
    if query.level >= Level.SERIES:
        series_url = base + path(row["study_uid"], row["series_uid"])
        out.update({tag: {"vr": vr} for tag, vr in SERIES_RETURN.items()})
        out.update(
            _pick(orjson.loads(row["series_attrs"]), None if wanted is None else wanted | set(SERIES_RETURN))
        )
        out["00201209"] = _value("IS", [row["num_instances"]])
        out["00081190"] = _value("UR", [series_url])
        if query.level == Level.INSTANCE:
            out.update({tag: {"vr": vr} for tag, vr in _INSTANCE_ALWAYS.items()})
            metadata = orjson.loads(row["metadata"] or "{}")
            out.update({k: v for k, v in metadata.items() if "BulkDataURI" not in v})
            out["00080056"] = _value("CS", ["ONLINE"])
            out["00083002"] = _value("UI", [row["transfer_syntax_uid"]])
            out["00081190"] = _value("UR", [base + path(row["study_uid"], row["series_uid"], row["sop_uid"])])
    return dict(sorted(out.items()))


def remaining_warning(base: str, remaining: int) -> str:
    """PS3.18 §8.3.4.4 Warning header (RFC 7234 §5.5 form, quoted text)."""
    return f'299 {base}: "There are {remaining} additional results that can be requested"'
