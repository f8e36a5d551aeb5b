"""dicom/query.py: QIDO query strings → typed conditions (PS3.4 C.2.2.2).  The SQL: db/test_search.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dicomweb_server.db.search import COLUMNS
from dicomweb_server.dicom.query import (
    ATTRIBUTES,
    INSTANCES,
    SEQUENCE_ATTRIBUTES,
    SERIES,
    SERIES_INSTANCES,
    STUDIES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Condition,
    Query,
    Resource,
    parse_query,
)
from dicomweb_server.dicom.resources import Level
from dicomweb_server.errors import BadRequest

UID1, UID2, UID3 = "1.2.840.10008.1", "1.2.826.0.1.3680043.2", "2.25.12345"


def conditions(raw: str, resource: Resource = INSTANCES, **kw: Any) -> dict[str, Condition]:
    """The parsed conditions by keyword."""
    return {c.attr.keyword: c for c in parse_query(raw, resource, **kw).conditions}


def one(raw: str, resource: Resource = INSTANCES) -> Condition:
    (condition,) = parse_query(raw, resource).conditions
    return condition


def bad(raw: str, resource: Resource = INSTANCES, **kw: Any) -> str:
    with pytest.raises(BadRequest) as info:
        parse_query(raw, resource, **kw)
    assert info.value.status == 400
    return info.value.message


# ---------------------------------------------------------------------------
# The routes and the attribute table


def test_every_required_matching_attribute_of_table_10_6_1_5_is_in_the_table() -> None:
    by_keyword = {a.keyword: a for a in ATTRIBUTES}
    required = {
        Level.STUDY: [
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "StudyID",
        ],
        Level.SERIES: [
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
        ],
        Level.INSTANCE: ["SOPClassUID", "SOPInstanceUID", "InstanceNumber"],
    }
    for level, keywords in required.items():
        for keyword in keywords:
            assert by_keyword[keyword].level == level, keyword
    assert {a.keyword for a in SEQUENCE_ATTRIBUTES.values()} == {
        "ScheduledProcedureStepID",
        "RequestedProcedureID",
    }
    # Column names go into SQL text: they must be plain qualified identifiers, one per attribute.
    assert set(COLUMNS) == {a.tag for a in [*ATTRIBUTES, *SEQUENCE_ATTRIBUTES.values()]}
    for attr in [*ATTRIBUTES, *SEQUENCE_ATTRIBUTES.values()]:
        assert re.fullmatch(r"(st|se|i)\.[a-z_]+", COLUMNS[attr.tag]), attr


# ---------------------------------------------------------------------------
# parse_query: matching kinds (PS3.4 C.2.2.2)


def test_single_value_matching() -> None:
    c = one("AccessionNumber=ACC-1")
    assert (c.attr.keyword, c.kind, c.values) == ("AccessionNumber", "single", ("ACC-1",))
    assert one("PatientID=pid 7").values == ("pid 7",)  # LO matching keeps case and spaces
    assert one("Modality=MR").kind == "single"


@pytest.mark.parametrize("value", ["", "*"])
def test_universal_matching_is_a_return_key_only(value: str) -> None:
    q = parse_query(f"PatientName={value}&StudyDate={value}&StudyInstanceUID={value}", INSTANCES)
    assert q.conditions == ()
    assert {"00100010", "00080020", "0020000D"} <= q.returned


def test_wildcard_percent_2a_is_universal_alone_and_a_wildcard_in_a_value() -> None:
    assert parse_query("PatientName=%2A", STUDIES).conditions == ()
    c = one("PatientName=Doe%2A", STUDIES)
    assert (c.kind, c.values) == ("wildcard", ("DOE*",))


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("AccessionNumber=AC*", ("AC*",)),
        ("AccessionNumber=A?C", ("A?C",)),
        ("AccessionNumber=*1*", ("*1*",)),
        ("StudyID=s?d*", ("s?d*",)),  # SH keeps case
        ("PatientName=doe*", ("DOE*",)),  # PN is folded: upper case ...
        ("PatientName=m%C3%BCller^J%C3%BC*", ("MULLER^JU*",)),  # ... and accent-free
        ("ReferringPhysicianName=*jos%C3%A9", ("*JOSE",)),
        ("PatientName=*%E5%B1%B1%E7%94%B0*", ("*山田*",)),  # ideographic passes through
    ],
)
def test_wildcard_matching(raw: str, values: tuple[str, ...]) -> None:
    c = one(raw)
    assert (c.kind, c.values) == ("wildcard", values)


def test_pn_single_value_is_folded_too() -> None:
    c = one("PatientName=M%C3%BCller%5EJ%C3%BCrgen")
    assert (c.kind, c.values) == ("single", ("MULLER^JURGEN",))


@pytest.mark.parametrize(
    ("raw", "kind", "values"),
    [
        (f"StudyInstanceUID={UID1}", "single", (UID1,)),
        (f"StudyInstanceUID={UID1},{UID2}", "list", (UID1, UID2)),
        (f"StudyInstanceUID={UID1}%5C{UID2}%5C{UID3}", "list", (UID1, UID2, UID3)),
        (f"SeriesInstanceUID={UID1}%2C{UID2}", "list", (UID1, UID2)),
        (f"SOPInstanceUID={UID1},%20{UID2}", "list", (UID1, UID2)),  # blanks around items
        (f"SOPClassUID={UID3}", "single", (UID3,)),
    ],
)
def test_uid_list_matching(raw: str, kind: str, values: tuple[str, ...]) -> None:
    c = one(raw)
    assert (c.kind, c.values) == (kind, values)


def test_uid_list_is_capped() -> None:
    assert "At most 2 UIDs" in bad(f"StudyInstanceUID={UID1},{UID2},{UID3}", max_uids=2)
    assert one(f"StudyInstanceUID={UID1},{UID2}").kind == "list"


def test_modalities_in_study_takes_a_list_and_wildcards() -> None:
    assert one("ModalitiesInStudy=CT").kind == "single"
    c = one("ModalitiesInStudy=CT,MR")
    assert (c.kind, c.values) == ("list", ("CT", "MR"))
    assert one("ModalitiesInStudy=CT%5CMR").values == ("CT", "MR")
    assert one("ModalitiesInStudy=C?").kind == "wildcard"


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("StudyDate=20240101", ("20240101",)),
        ("StudyDate=2024.01.01", ("20240101",)),  # ACR-NEMA form
        ("PatientBirthDate=19800229", ("19800229",)),
        ("StudyTime=101112", ("101112.000000",)),
        ("StudyTime=101112.5", ("101112.500000",)),
        ("StudyTime=10:11:12", ("101112.000000",)),
        ("StudyTime=1011", ("101100.000000",)),
        ("PerformedProcedureStepStartTime=07", ("070000.000000",)),
    ],
)
def test_date_and_time_single_values_are_normalised(raw: str, values: tuple[str, ...]) -> None:
    c = one(raw)
    assert (c.kind, c.values) == ("single", values)


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("StudyDate=20240101-20240131", ("20240101", "20240131")),
        ("StudyDate=20240101-", ("20240101", "")),
        ("StudyDate=-20240131", ("", "20240131")),
        ("PerformedProcedureStepStartDate=2024.01.01-2024.02.01", ("20240101", "20240201")),
        ("StudyTime=0800-1700", ("080000.000000", "170059.999999")),  # partial upper end covers its span
        ("StudyTime=08-17", ("080000.000000", "175959.999999")),
        ("StudyTime=083015.25-", ("083015.250000", "")),
        ("StudyTime=-120000", ("", "120000.999999")),
        ("PerformedProcedureStepStartTime=10:00-11:30", ("100000.000000", "113059.999999")),
    ],
)
def test_range_matching(raw: str, values: tuple[str, str]) -> None:
    c = one(raw)
    assert (c.kind, c.values) == ("range", values)


def test_date_range_and_time_range_combine_into_one_datetime_condition() -> None:
    q = parse_query("StudyDate=20240101-20240131&StudyTime=0800-1700&Modality=CT", INSTANCES)
    assert [c.kind for c in q.conditions] == ["single", "datetime"]
    (dt,) = [c for c in q.conditions if c.kind == "datetime"]
    assert dt.attr.keyword == "StudyDate"
    assert dt.values == ("20240101", "080000.000000", "20240131", "170059.999999", "00080030")
    assert COLUMNS[dt.values[4]] == "st.study_time"
    # the performed procedure step pair combines the same way
    (pps,) = parse_query(
        "PerformedProcedureStepStartDate=-20240131&PerformedProcedureStepStartTime=-1200", SERIES
    ).conditions
    assert pps.kind == "datetime"
    assert pps.values == ("", "", "20240131", "120059.999999", "00400245")
    assert COLUMNS[pps.values[4]] == "se.pps_start_time"


@pytest.mark.parametrize(
    "raw",
    [
        "StudyDate=20240101&StudyTime=0800-1700",  # a single date is not a range
        "StudyDate=20240101-20240131&StudyTime=0800",
        "StudyDate=20240101-&PerformedProcedureStepStartTime=0800-",  # not a pair
    ],
)
def test_only_a_date_range_with_its_time_range_combines(raw: str) -> None:
    assert "datetime" not in [c.kind for c in parse_query(raw, INSTANCES).conditions]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("SeriesNumber=7", 7),
        ("SeriesNumber=+7", 7),
        ("InstanceNumber=-3", -3),
        ("InstanceNumber=007", 7),
        ("InstanceNumber=%207%20", 7),
    ],
)
def test_integer_string_matching(raw: str, value: int) -> None:
    c = one(raw)
    assert (c.kind, c.values) == ("single", (str(value),))


@pytest.mark.parametrize("value", ["1.5", "1e3", "7*", "1,2", "abc", "12345678901"])
def test_integer_string_must_be_an_integer(value: str) -> None:
    assert "must be an integer" in bad(f"SeriesNumber={value}")


def test_integer_string_beyond_the_column_range_is_a_400() -> None:
    assert "SeriesNumber" in bad("SeriesNumber=9999999999")


@pytest.mark.parametrize(
    ("raw", "requested", "scheduled"),
    [
        ("RequestAttributesSequence.RequestedProcedureID=RP1", "RP1", None),
        ("00400275.00401001=RP1", "RP1", None),
        ("00400275.RequestedProcedureID=RP1", "RP1", None),
        ("RequestAttributesSequence.ScheduledProcedureStepID=SPS*", None, "SPS*"),
        ("00400275.00400009=SPS*", None, "SPS*"),
    ],
)
def test_sequence_matching_paths(raw: str, requested: str | None, scheduled: str | None) -> None:
    q = parse_query(raw, SERIES)
    (c,) = q.conditions
    if requested:
        assert (c.attr.keyword, COLUMNS[c.attr.tag], c.values) == (
            "RequestedProcedureID",
            "se.requested_procedure_ids",
            (requested,),
        )
    else:
        assert (c.attr.keyword, c.kind, c.values) == ("ScheduledProcedureStepID", "wildcard", (scheduled,))
    assert c.attr.array
    assert q.returned == {"00400275"}  # the whole sequence is returned


@pytest.mark.parametrize(
    "raw",
    [
        "RequestAttributesSequence.PatientName=x",
        "ReferencedSeriesSequence.ReferencedSOPInstanceUID=1.2",
    ],
)
def test_other_sequence_paths_are_not_supported(raw: str) -> None:
    assert "Sequence matching on" in bad(raw)


def test_sequence_paths_are_two_levels_deep_at_most() -> None:
    assert "too deep" in bad("00400275.00400275.00401001=x")


@pytest.mark.parametrize(
    "key",
    ["PatientName", "00100010", "0010%30010", "Patient%4Eame"],
)
def test_keyword_and_tag_name_the_same_attribute(key: str) -> None:
    c = one(f"{key}=Doe")
    assert (c.attr.tag, c.values) == ("00100010", ("DOE",))


def test_hex_tags_are_case_insensitive() -> None:
    assert one(f"0020000d={UID1}").attr.keyword == "StudyInstanceUID"
    assert one(f"0020000D={UID1}").attr.keyword == "StudyInstanceUID"


# ---------------------------------------------------------------------------
# Percent-decoding


@pytest.mark.parametrize(
    ("raw", "kind", "values"),
    [
        ("PatientName=Doe%5EJane", "single", ("DOE^JANE",)),
        ("PatientName=Doe^Jane", "single", ("DOE^JANE",)),
        ("PatientName=M%C3%BCller*", "wildcard", ("MULLER*",)),
        ("AccessionNumber=A+1", "single", ("A 1",)),  # '+' is a space (form encoding, dicomweb-client)
        ("AccessionNumber=A%2B1", "single", ("A+1",)),
        ("AccessionNumber=A%201", "single", ("A 1",)),
        ("AccessionNumber=A%26B%3DC%23", "single", ("A&B=C#",)),  # reserved characters, encoded
        ("AccessionNumber=100%25", "single", ("100%",)),
        ("PatientName=Yamada^Tarou=%E5%B1%B1%E7%94%B0", "single", ("YAMADA^TAROU=山田",)),  # '=' in a value
    ],
)
def test_percent_decoding(raw: str, kind: str, values: tuple[str, ...]) -> None:
    c = one(raw)
    assert (c.kind, c.values) == (kind, values)


@pytest.mark.parametrize("raw", ["PatientName=%FF", "PatientName=M%C3%28ller", "Patient%FFName=x"])
def test_invalid_utf8_percent_encoding_is_a_400(raw: str) -> None:
    assert "not valid percent-encoded UTF-8" in bad(raw)


def test_empty_query_and_stray_ampersands() -> None:
    q = parse_query("", STUDIES, max_limit=50)
    assert (q.conditions, q.returned, q.include_all, q.limit, q.offset) == (
        (),
        frozenset(),
        False,
        50,
        0,
    )
    assert parse_query("&&PatientName=x&", STUDIES).conditions == (one("PatientName=x", STUDIES),)


# ---------------------------------------------------------------------------
# includefield


@pytest.mark.parametrize(
    ("raw", "returned"),
    [
        ("includefield=StudyDescription", {"00081030"}),
        ("includefield=00081030", {"00081030"}),
        ("includefield=0008103e", {"0008103E"}),
        ("includefield=StudyDescription,00101010", {"00081030", "00101010"}),
        ("includefield=StudyDescription%2C00101010", {"00081030", "00101010"}),
        ("includefield=StudyDescription&includefield=PatientAge", {"00081030", "00101010"}),
        ("includefield=StudyDescription,%20PatientAge", {"00081030", "00101010"}),
        ("includefield=RequestAttributesSequence.RequestedProcedureID", {"00400275"}),
        ("includefield=00091010", {"00091010"}),  # a private tag may be asked for
        ("includefield=StudyDescription&PatientName=Doe", {"00081030", "00100010"}),
    ],
)
def test_includefield(raw: str, returned: set[str]) -> None:
    q = parse_query(raw, INSTANCES)
    assert q.returned == returned
    assert not q.include_all


def test_includefield_all() -> None:
    assert parse_query("includefield=all", STUDIES).include_all
    assert parse_query("includefield=PatientAge&includefield=all", STUDIES).include_all


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("includefield=NoSuchKeyword", "Unknown attribute 'NoSuchKeyword'"),
        ("includefield=12345678", "Unknown attribute tag 12345678"),
        ("includefield=PatientAge,", "includefield has an empty attribute"),
        ("includefield=", "includefield has an empty attribute"),
    ],
)
def test_includefield_errors(raw: str, message: str) -> None:
    assert message in bad(raw)


# ---------------------------------------------------------------------------
# limit, offset, fuzzymatching


def test_limit_and_offset_defaults() -> None:
    q = parse_query("", STUDIES)
    assert (q.limit, q.offset) == (1000, 0)
    q = parse_query("limit=&offset=", STUDIES, max_limit=20)
    assert (q.limit, q.offset) == (20, 0)


def test_limit_and_offset_values() -> None:
    q = parse_query("limit=25&offset=50", STUDIES)
    assert (q.limit, q.offset) == (25, 50)
    q = parse_query("limit=100&offset=1000", STUDIES, max_limit=100, max_offset=1000)
    assert (q.limit, q.offset) == (100, 1000)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("limit=101", "limit must be at most 100"),
        ("offset=1001", "offset must be at most 1000"),
        ("limit=0", "limit must be at least 1"),
        ("limit=-1", "limit must be a non-negative integer, got '-1'"),
        ("limit=+5", "limit must be a non-negative integer"),
        ("limit=ten", "limit must be a non-negative integer, got 'ten'"),
        ("limit=1.5", "limit must be a non-negative integer"),
        ("offset=-1", "offset must be a non-negative integer"),
        ("offset=abc", "offset must be a non-negative integer"),
        ("limit=%201", "limit must be a non-negative integer"),
    ],
)
def test_limit_and_offset_errors(raw: str, message: str) -> None:
    assert message in bad(raw, max_limit=100, max_offset=1000)


def test_limit_with_a_superscript_digit_is_a_400() -> None:
    assert "limit" in bad("limit=%C2%B2")


def test_fuzzymatching_turns_pn_single_values_into_fuzzy_conditions_only() -> None:
    q = parse_query(
        "PatientName=jo&ReferringPhysicianName=House*&AccessionNumber=A1&fuzzymatching=true", STUDIES
    )
    kinds = {c.attr.keyword: (c.kind, c.values) for c in q.conditions}
    assert kinds == {
        "PatientName": ("fuzzy", ("JO",)),
        "ReferringPhysicianName": ("wildcard", ("HOUSE*",)),
        "AccessionNumber": ("single", ("A1",)),
    }
    # the order of the parameters does not matter
    assert parse_query("fuzzymatching=true&PatientName=jo", STUDIES).conditions[0].kind == "fuzzy"
    q = parse_query("PatientName=jo&fuzzymatching=false", STUDIES)
    assert q.conditions[0].kind == "single"


@pytest.mark.parametrize("value", ["TRUE", "yes", "1", ""])
def test_fuzzymatching_is_true_or_false(value: str) -> None:
    assert "fuzzymatching must be 'true' or 'false'" in bad(f"fuzzymatching={value}")


# ---------------------------------------------------------------------------
# Errors: each a 400 with a readable message


@pytest.mark.parametrize(
    ("raw", "resource", "message"),
    [
        ("Foo=bar", STUDIES, "Unknown attribute 'Foo': use a DICOM keyword or an 8-digit hex tag"),
        ("patientname=x", STUDIES, "Unknown attribute 'patientname'"),  # keywords are case-sensitive
        ("12345678=x", STUDIES, "Unknown attribute tag 12345678"),
        ("0010001=x", STUDIES, "Unknown attribute '0010001'"),
        ("=x", STUDIES, "is not supported"),  # an empty name
        ("BodyPartExamined=HEAD", SERIES, "Matching on BodyPartExamined is not supported"),
        ("00180015=HEAD", SERIES, "Matching on 00180015 is not supported"),
        ("00091010=x", STUDIES, "Matching on 00091010 is not supported"),  # private
        ("PatientName=a&PatientName=b", STUDIES, "Attribute PatientName is given more than once"),
        ("PatientName=&PatientName=b", STUDIES, "more than once"),
        (f"SOPInstanceUID={UID1}", STUDIES, "SOPInstanceUID is an instance-level attribute"),
        ("Modality=CT", STUDIES, "Modality is a series-level attribute"),
        ("InstanceNumber=1", SERIES, "this resource searches series and cannot match on it"),
        ("InstanceNumber=1", STUDY_SERIES, "InstanceNumber is an instance-level attribute"),
        (
            "RequestAttributesSequence.RequestedProcedureID=x",
            STUDIES,
            "RequestedProcedureID is a series-level attribute; this resource searches studies",
        ),
        ("StudyDate=20241301", STUDIES, "StudyDate: '20241301' is not a DICOM date (YYYYMMDD)"),
        ("StudyDate=2024-01-01", STUDIES, "is not a DICOM date"),
        ("StudyDate=yesterday", STUDIES, "StudyDate: 'yesterday' is not a DICOM date"),
        ("StudyDate=2024*", STUDIES, "is not a DICOM date"),  # no wildcards on DA
        ("PatientBirthDate=20230229", STUDIES, "is not a DICOM date"),
        ("StudyDate=-", STUDIES, "StudyDate: a range needs at least one end"),
        ("StudyTime=-", STUDIES, "a range needs at least one end"),
        ("StudyDate=--", STUDIES, "is not a DICOM date"),
        ("StudyTime=2400", STUDIES, "StudyTime: '2400' is not a DICOM time (HHMMSS.FFFFFF;"),
        ("StudyTime=1260", STUDIES, "is not a DICOM time"),
        ("StudyTime=1", STUDIES, "is not a DICOM time"),
        ("StudyTime=10*", STUDIES, "is not a DICOM time"),
        ("StudyTime=0800-25", STUDIES, "StudyTime: '0800-25' is not a DICOM time"),
        ("StudyDate=2024-01-01", STUDIES, "or range (YYYYMMDD-YYYYMMDD)"),
        ("StudyDate=20240101-20230101", STUDIES, "StudyDate: the range ends before it starts"),
        ("StudyTime=12-11", STUDIES, "StudyTime: the range ends before it starts"),
        ("StudyDate=20230102-20230101&StudyTime=10-11", STUDIES, "StudyDate: the range ends before"),
        ("StudyDate=%D9%A2%D9%A0%D9%A0%D9%A4%D9%A0%D9%A1%D9%A0%D9%A1", STUDIES, "is not a DICOM date"),
        ("StudyTime=%D9%A1%D9%A2", STUDIES, "is not a DICOM time"),
        ("SeriesNumber=%D9%A3", SERIES, "SeriesNumber must be an integer (32-bit, ASCII digits)"),
        ("InstanceNumber=%EF%BC%93", INSTANCES, "must be an integer"),  # fullwidth three
        ("PatientID=a%00b", STUDIES, "'PatientID' contains a control character (such as NUL"),
        ("PatientName=a%0D%0Ab", STUDIES, "contains a control character"),
        ("PatientID=a%C2%85", STUDIES, "contains a control character"),  # C1 NEL
        ("Patient%00ID=x", STUDIES, "contains a control character"),
        ("limit=5&limit=6", STUDIES, "limit is given more than once"),
        ("offset=0&offset=0", STUDIES, "offset is given more than once"),
        ("fuzzymatching=true&fuzzymatching=true", STUDIES, "fuzzymatching is given more than once"),
        ("includefield=PatientName.PatientID", STUDIES, "PatientName is not a sequence"),
        ("includefield=.PatientName", STUDIES, "has an empty attribute in its path"),
        ("includefield=ReferencedSeriesSequence..SeriesInstanceUID", STUDIES, "empty attribute"),
        ("includefield=ReferencedSeriesSequence.Nope", STUDIES, "Unknown attribute 'Nope'"),
        ("StudyTime=101112.1234567", STUDIES, "is not a DICOM time"),
        ("StudyInstanceUID=1.02.3", STUDIES, "StudyInstanceUID: '1.02.3' is not a valid UID"),
        ("StudyInstanceUID=1.2.*", STUDIES, "is not a valid UID"),  # no wildcards on UI
        (f"StudyInstanceUID={UID1},", STUDIES, "StudyInstanceUID: '' is not a valid UID"),
        (f"SOPClassUID={'1.' * 32}1", INSTANCES, "is not a valid UID"),  # 65 characters
        ("PatientName=%C3", STUDIES, "not valid percent-encoded UTF-8"),
    ],
)
def test_errors_are_400_with_a_readable_message(raw: str, resource: Resource, message: str) -> None:
    assert message in bad(raw, resource)


def test_a_date_time_range_may_cross_midnight() -> None:
    (c,) = parse_query("StudyDate=20230101-20230102&StudyTime=2300-0100", STUDIES).conditions
    assert c.kind == "datetime"


def test_includefield_accepts_a_sequence_path_and_repeats() -> None:
    q = parse_query("includefield=ReferencedSeriesSequence.SeriesInstanceUID&includefield=00081030", STUDIES)
    assert q.returned == {"00081115", "00081030"}


def test_the_same_attribute_by_keyword_and_by_tag_is_a_repeat() -> None:
    assert "more than once" in bad("PatientName=a*&00100010=b*", STUDIES)


@pytest.mark.parametrize("value", ["202611", "2024115", "2024115-", "-202611"])
def test_dates_must_have_eight_digits(value: str) -> None:
    assert "is not a DICOM date" in bad(f"StudyDate={value}", STUDIES)


def test_universal_matching_on_request_attributes_sequence() -> None:
    q = parse_query("RequestAttributesSequence=", SERIES)
    assert (q.conditions, q.returned) == ((), {"00400275"})


@pytest.mark.parametrize(
    ("raw", "resource"),
    [
        ("PatientName=x", SERIES),  # study attributes on the all-series and all-instances resources
        ("PatientName=x", INSTANCES),
        ("Modality=MR", INSTANCES),
        ("Modality=MR", STUDY_SERIES),
        ("Modality=MR", STUDY_INSTANCES),
        ("InstanceNumber=1", STUDY_INSTANCES),
        ("InstanceNumber=1", SERIES_INSTANCES),
        ("RequestAttributesSequence.RequestedProcedureID=x", SERIES),
    ],
)
def test_levels_each_resource_accepts(raw: str, resource: Resource) -> None:
    (c,) = parse_query(raw, resource).conditions
    assert c.attr.level in resource.accepts


def test_query_carries_the_scope_and_level() -> None:
    q = parse_query("", SERIES_INSTANCES, study_uid=UID1, series_uid=UID2)
    assert (q.level, q.study_uid, q.series_uid) == (Level.INSTANCE, UID1, UID2)


def test_query_defaults() -> None:
    q = Query(Level.STUDY)
    assert (q.conditions, q.include_all, q.offset) == ((), False, 0)


def test_accept_parameter_is_not_a_matching_key() -> None:
    """PS3.18 Table 8.3.3.1-2: ``accept`` is content negotiation's (web/media.py), on QIDO as on WADO."""
    q = parse_query("accept=application/json&PatientID=P1", STUDIES)
    assert [(c.attr.keyword, c.values) for c in q.conditions] == [("PatientID", ("P1",))]
    assert q.returned == frozenset({"00100020"})
