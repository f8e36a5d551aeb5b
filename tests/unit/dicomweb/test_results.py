"""results.py: one DICOM JSON result per index row (PS3.18 §10.6.3), and the remaining-results Warning."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dicomweb_server.dicom.query import INSTANCES, SERIES, STUDIES, Resource, parse_query
from dicomweb_server.dicom.resources import SERIES_RETURN, STUDY_RETURN, Level
from dicomweb_server.dicomweb.results import remaining_warning, result

BASE = "https://pacs.example.org"
STUDY_UID, SERIES_UID, SOP_UID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# What ingest keeps with the study and the series (dicom_index.STUDY_TAGS / SERIES_TAGS subsets).
STUDY_ATTRS = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080020": {"vr": "DA", "Value": ["20240115"]},
    "00080030": {"vr": "TM", "Value": ["083000"]},
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "House^Gregory"}]},
    "00081030": {"vr": "LO", "Value": ["Brain MRI"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
    "00100020": {"vr": "LO", "Value": ["PID-1"]},
    "00101010": {"vr": "AS", "Value": ["044Y"]},
    "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
}
SERIES_ATTRS = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080060": {"vr": "CS", "Value": ["MR"]},
    "00080070": {"vr": "LO", "Value": ["ACME"]},
    "0008103E": {"vr": "LO", "Value": ["T1 AX"]},
    "0020000E": {"vr": "UI", "Value": [SERIES_UID]},
    "00400244": {"vr": "DA", "Value": ["20240115"]},
    "00400275": {
        "vr": "SQ",
        "Value": [{"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}}],
    },
}
METADATA = {
    **STUDY_ATTRS,
    **SERIES_ATTRS,
    "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.4"]},
    "00080018": {"vr": "UI", "Value": [SOP_UID]},
    "00200013": {"vr": "IS", "Value": [7]},
    "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
    "00280010": {"vr": "US", "Value": [256]},
    "00280011": {"vr": "US", "Value": [256]},
    "00280100": {"vr": "US", "Value": [16]},
    "00291010": {"vr": "OB", "BulkDataURI": f"{BASE}/bulk/00291010"},
    "00291011": {"vr": "OB", "InlineBinary": "AAEC"},
    "7FE00010": {"vr": "OW", "BulkDataURI": f"{BASE}/bulk/7FE00010"},
}


def row(level: Level, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row as to_sql's page statement returns it for ``level``."""
    out: dict[str, Any] = {
        "pk": 1,
        "study_uid": STUDY_UID,
        "study_attrs": orjson.dumps(STUDY_ATTRS).decode(),
        "modalities": ["CT", "MR"],
        "num_series": 2,
        "study_instances": 5,
    }
    if level >= Level.SERIES:
        out |= {
            "series_uid": SERIES_UID,
            "series_attrs": orjson.dumps(SERIES_ATTRS).decode(),
            "num_instances": 3,
        }
    if level == Level.INSTANCE:
        out |= {
            "sop_uid": SOP_UID,
            "transfer_syntax_uid": EXPLICIT_LE,
            "metadata": orjson.dumps(METADATA if metadata is None else metadata).decode(),
        }
    return out


def build(raw: str, resource: Resource, **row_kw: Any) -> dict[str, Any]:
    return result(parse_query(raw, resource), row(resource.level, **row_kw), BASE)


def values(res: dict[str, Any], tag: str) -> list[Any] | None:
    return res[tag].get("Value")


# ---------------------------------------------------------------------------
# Study results (Table 10.6.3-3)


def test_study_result_has_every_required_attribute() -> None:
    res = build("", STUDIES)
    assert set(STUDY_RETURN) <= set(res)
    for tag, vr in STUDY_RETURN.items():
        assert res[tag]["vr"] == vr, tag
    assert values(res, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
    assert values(res, "0020000D") == [STUDY_UID]


def test_study_result_unknown_required_attributes_are_present_and_empty() -> None:
    res = build("", STUDIES)
    for tag, vr in [("00080050", "SH"), ("00100030", "DA"), ("00100040", "CS"), ("00200010", "SH")]:
        assert res[tag] == {"vr": vr}, tag


def test_study_result_aggregates_availability_and_retrieve_url() -> None:
    res = build("", STUDIES)
    assert res["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert res["00201206"] == {"vr": "IS", "Value": [2]}
    assert res["00201208"] == {"vr": "IS", "Value": [5]}
    assert res["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert res["00081190"] == {"vr": "UR", "Value": [f"{BASE}/dicomweb/studies/{STUDY_UID}"]}


def test_study_result_without_modalities_has_an_empty_modalities_in_study() -> None:
    r = row(Level.STUDY) | {"modalities": None}
    assert result(parse_query("", STUDIES), r, BASE)["00080061"] == {"vr": "CS"}


def test_study_result_carries_the_character_set_but_not_other_optional_attributes() -> None:
    res = build("", STUDIES)
    assert values(res, "00080005") == ["ISO_IR 192"]
    assert "00081030" not in res and "00101010" not in res


@pytest.mark.parametrize(
    "raw",
    [
        "includefield=StudyDescription",
        "includefield=00081030",
        "StudyDescription=Brain*",
        "StudyDescription=",
    ],
)
def test_study_result_includes_an_attribute_asked_for(raw: str) -> None:
    res = build(raw, STUDIES)
    assert values(res, "00081030") == ["Brain MRI"]
    assert "00101010" not in res


def test_study_result_includefield_all() -> None:
    res = build("includefield=all", STUDIES)
    assert values(res, "00081030") == ["Brain MRI"]
    assert values(res, "00101010") == ["044Y"]


def test_study_result_never_carries_series_or_instance_attributes() -> None:
    res = build("includefield=SeriesDescription,Modality,SOPInstanceUID,Rows", STUDIES)
    for tag in ("0008103E", "00080060", "00080018", "00280010", "0020000E"):
        assert tag not in res


def test_result_keys_are_sorted() -> None:
    for resource in (STUDIES, SERIES, INSTANCES):
        res = build("includefield=all", resource)
        assert list(res) == sorted(res)
        # and they stay sorted through the JSON encoder
        assert list(orjson.loads(orjson.dumps(res))) == sorted(res)


# ---------------------------------------------------------------------------
# Series results (Table 10.6.3-4)


def test_series_result_has_series_and_study_attributes() -> None:
    res = build("", SERIES)
    assert set(SERIES_RETURN) | set(STUDY_RETURN) <= set(res)
    assert values(res, "00080060") == ["MR"]
    assert values(res, "0020000E") == [SERIES_UID]
    assert res["00200011"] == {"vr": "IS"}  # unknown series number: present and empty
    assert values(res, "00201209") == [3]
    # study attributes and aggregates too (§10.6.3.3 for /series)
    assert values(res, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
    assert values(res, "00080020") == ["20240115"]
    assert values(res, "00201206") == [2]
    assert values(res, "00201208") == [5]
    assert values(res, "00080061") == ["CT", "MR"]


def test_series_result_retrieve_url_names_the_series() -> None:
    res = build("", SERIES)
    assert values(res, "00081190") == [f"{BASE}/dicomweb/studies/{STUDY_UID}/series/{SERIES_UID}"]


def test_series_result_conditional_attributes_when_known() -> None:
    res = build("", SERIES)
    assert values(res, "0008103E") == ["T1 AX"]
    assert values(res, "00400244") == ["20240115"]
    assert res["00400275"] == SERIES_ATTRS["00400275"]
    assert "00400245" not in res  # conditional and unknown: left out
    assert "00080070" not in res  # not asked for


def test_series_result_includefield() -> None:
    assert values(build("includefield=Manufacturer", SERIES), "00080070") == ["ACME"]
    assert values(build("includefield=00080070", SERIES), "00080070") == ["ACME"]
    assert values(build("includefield=all", SERIES), "00080070") == ["ACME"]


def test_series_result_never_carries_instance_attributes() -> None:
    res = build("includefield=SOPInstanceUID,InstanceNumber,Rows", SERIES)
    for tag in ("00080018", "00200013", "00280010", "00083002"):
        assert tag not in res


# ---------------------------------------------------------------------------
# Instance results (Table 10.6.3-5)


def test_instance_result_has_instance_series_and_study_attributes() -> None:
    res = build("", INSTANCES)
    assert set(SERIES_RETURN) | set(STUDY_RETURN) <= set(res)
    assert values(res, "00080016") == ["1.2.840.10008.5.1.4.1.1.4"]
    assert values(res, "00080018") == [SOP_UID]
    assert values(res, "00200013") == [7]
    assert values(res, "00280010") == [256]
    assert values(res, "00280011") == [256]
    assert values(res, "00280100") == [16]
    assert values(res, "00083002") == [EXPLICIT_LE]
    assert values(res, "00080056") == ["ONLINE"]
    assert values(res, "00080060") == ["MR"]
    assert values(res, "00201209") == [3]
    assert values(res, "00100020") == ["PID-1"]


def test_instance_result_retrieve_url_names_the_instance() -> None:
    res = build("", INSTANCES)
    assert values(res, "00081190") == [
        f"{BASE}/dicomweb/studies/{STUDY_UID}/series/{SERIES_UID}/instances/{SOP_UID}"
    ]


def test_instance_result_required_attributes_are_present_when_the_metadata_lacks_them() -> None:
    res = build("", INSTANCES, metadata={})
    for tag, vr in [("00080016", "UI"), ("00080018", "UI"), ("00200013", "IS")]:
        assert res[tag] == {"vr": vr}
    res = result(parse_query("", INSTANCES), row(Level.INSTANCE) | {"metadata": None}, BASE)
    assert res["00200013"] == {"vr": "IS"}


def test_instance_result_never_carries_bulk_data() -> None:
    for raw in ("", "includefield=all", "includefield=PixelData,00291010"):
        res = build(raw, INSTANCES)
        assert "7FE00010" not in res
        assert "00291010" not in res
    assert build("includefield=all", INSTANCES)["00291011"] == {"vr": "OB", "InlineBinary": "AAEC"}


def test_instance_result_passes_the_selected_metadata_through() -> None:
    """The page statement narrows the metadata to the returned attributes (see test_query); the
    result keeps what the row holds, minus bulk data."""
    res = build("includefield=PhotometricInterpretation", INSTANCES)
    assert values(res, "00280004") == ["MONOCHROME2"]
    narrowed = {k: METADATA[k] for k in ("00080016", "00080018", "00200013")}
    assert "00280004" not in build("", INSTANCES, metadata=narrowed)


def test_result_is_json_serialisable_with_non_ascii_intact() -> None:
    body = orjson.dumps([build("includefield=all", INSTANCES)])
    assert "Müller^Jürgen".encode() in body


# ---------------------------------------------------------------------------
# The Warning header (PS3.18 §8.3.4.4, RFC 7234 §5.5)


@pytest.mark.parametrize("remaining", [1, 16, 1_000_000])
def test_remaining_warning(remaining: int) -> None:
    assert remaining_warning(BASE, remaining) == (
        f'299 {BASE}: "There are {remaining} additional results that can be requested"'
    )
