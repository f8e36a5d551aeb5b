"""db/search.py: a parsed QIDO query → parameterised SQL (values always $n), and the keyset page cache."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dicomweb_server.db.search import PageCache, signature, to_sql
from dicomweb_server.dicom.query import (
    INSTANCES,
    SERIES,
    SERIES_INSTANCES,
    STUDIES,
    STUDY_SERIES,
    Resource,
    parse_query,
)
from dicomweb_server.dicom.resources import INSTANCE_METADATA

UID1, UID2, UID3 = "1.2.840.10008.1", "1.2.826.0.1.3680043.2", "2.25.12345"


# ---------------------------------------------------------------------------
# to_sql

PLACEHOLDER = re.compile(r"\$(\d+)")


def placeholders(sql: str) -> set[int]:
    return {int(n) for n in PLACEHOLDER.findall(sql)}


def check_parameters(sql: str, args: list[object]) -> None:
    """Every argument is used and every placeholder has an argument."""
    assert placeholders(sql) == set(range(1, len(args) + 1)), (sql, args)


def sql_for(
    raw: str, resource: Resource = INSTANCES, tenant: str = "t", after_pk: int | None = None, **kw: Any
) -> Any:
    statements = to_sql(parse_query(raw, resource, **kw), tenant, after_pk=after_pk)
    check_parameters(statements.page, statements.page_args)
    check_parameters(statements.count, statements.count_args)
    assert statements.count_args == statements.page_args[: len(statements.count_args)]
    return statements


MARK = "zqxj%27%20OR%20%271%27%3D%271%27%3B%20DROP%20TABLE%20study%3B--"  # zqxj' OR '1'='1'; DROP ...


@pytest.mark.parametrize(
    "raw",
    [
        f"PatientName={MARK}",
        f"PatientName={MARK}*",
        f"PatientName={MARK}&fuzzymatching=true",
        f"AccessionNumber={MARK}",
        f"AccessionNumber=*{MARK}?",
        f"PatientID={MARK}",
        f"StudyID={MARK}",
        f"ModalitiesInStudy={MARK}",
        f"ModalitiesInStudy=CT,{MARK}",
        f"ModalitiesInStudy={MARK}*",
        f"RequestAttributesSequence.RequestedProcedureID={MARK}",
        f"00400275.00400009={MARK}*",
    ],
)
def test_user_values_never_reach_the_sql_text(raw: str) -> None:
    s = sql_for(raw, study_uid=UID1, series_uid=UID2)
    for text in (s.page, s.count):
        assert "ZQXJ" not in text.upper()
        assert "DROP" not in text
        # the only quoted literal in the generated SQL is the empty string of the datetime stamp
        assert "'" not in text.replace("''", "")
    assert any("ZQXJ" in str(a).upper() for a in s.page_args)


def test_every_matching_kind_is_parameterised() -> None:
    raw = (
        f"StudyInstanceUID={UID1},{UID2}&SOPClassUID={UID3}&PatientName=Doe*&PatientID=P1"
        "&ModalitiesInStudy=CT&Modality=MR&SeriesNumber=3&InstanceNumber=4"
        "&StudyDate=20240101-20240131&StudyTime=0800-1700"
        "&PerformedProcedureStepStartDate=20240101-&PerformedProcedureStepStartTime=-1000"
        "&RequestAttributesSequence.RequestedProcedureID=RP*&00400275.00400009=S1"
        "&ReferringPhysicianName=house&fuzzymatching=true&limit=10&offset=20"
    )
    s = sql_for(raw, INSTANCES, study_uid=UID1, series_uid=UID2)
    args = s.page_args
    assert args[0] == "t"
    assert [UID1, UID2] in args
    for value in ("DOE%", "P1", "CT", "MR", 3, 4, "RP%", "S1", "20240101080000.000000"):
        assert value in args, value
    assert "20240131170059.999999" in args
    assert "20240101000000.000000" in args  # an open time end of a combined range
    assert "(^|[\\^= ])HOUSE" in args
    assert args[-2:] == [11, 20]  # one row more than the limit, then the offset
    for literal in (UID1, UID2, UID3, "DOE", "P1", "'CT'", "RP", "HOUSE", "2024"):
        assert literal not in s.page and literal not in s.count


@pytest.mark.parametrize(
    ("raw", "fragment", "arg"),
    [
        ("AccessionNumber=A1", "st.accession_number = $2", "A1"),
        ("SeriesNumber=3", "se.series_number = $2", 3),
        (f"StudyInstanceUID={UID1},{UID2}", "st.study_uid = ANY($2::text[])", [UID1, UID2]),
        ("ModalitiesInStudy=CT", "st.modalities @> ARRAY[$2]::text[]", "CT"),
        ("ModalitiesInStudy=CT,MR", "st.modalities && $2::text[]", ["CT", "MR"]),
        (
            "ModalitiesInStudy=C*",
            "EXISTS (SELECT 1 FROM unnest(st.modalities) AS v WHERE v LIKE $2)",
            "C%",
        ),
        ("PatientName=Doe?Jane*", "st.patient_name_folded LIKE $2", "DOE_JANE%"),
        ("StudyDate=20240101", "st.study_date = $2", "20240101"),
        ("StudyTime=1011", "st.study_time = $2", "101100.000000"),
        ("StudyDate=20240101-", "st.study_date >= $2", "20240101"),
        ("StudyDate=-20240101", "st.study_date <= $2", "20240101"),
        ("PatientName=jo&fuzzymatching=true", "st.patient_name_folded ~ $2", "(^|[\\^= ])JO"),
        (
            "RequestAttributesSequence.RequestedProcedureID=RP1",
            "se.requested_procedure_ids @> ARRAY[$2]::text[]",
            "RP1",
        ),
    ],
)
def test_sql_per_matching_kind(raw: str, fragment: str, arg: object) -> None:
    s = sql_for(raw)
    assert fragment in s.page and fragment in s.count
    assert s.page_args[1] == arg


def test_closed_range_has_both_bounds() -> None:
    s = sql_for("StudyDate=20240101-20240131")
    assert "st.study_date >= $2 AND st.study_date <= $3" in s.page
    assert s.page_args[1:3] == ["20240101", "20240131"]


def test_combined_datetime_range_compares_date_and_time_together() -> None:
    s = sql_for("StudyDate=20240101-20240131&StudyTime=0800-1700")
    stamp = "(st.study_date || coalesce(st.study_time, ''))"
    assert f"{stamp} >= $2 AND {stamp} <= $3" in s.page
    assert s.page_args[1:3] == ["20240101080000.000000", "20240131170059.999999"]
    s = sql_for("StudyDate=-20240131&StudyTime=0800-")  # time bounds without their date are dropped
    assert f"{stamp} <= $2" in s.page and ">=" not in s.page
    assert s.page_args[1] == "20240131235959.999999"


def test_fuzzy_matching_makes_one_regex_per_word_with_the_word_escaped() -> None:
    s = sql_for("PatientName=o.brien%20jo%5Eann&fuzzymatching=true")
    assert s.page.count("st.patient_name_folded ~ $") == 3
    assert s.page_args[1:4] == ["(^|[\\^= ])O\\.BRIEN", "(^|[\\^= ])JO", "(^|[\\^= ])ANN"]


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("100%25*", "100\\%%"),  # % is literal
        ("a_b*", "a\\_b%"),  # _ is literal
        ("a%5Cb?", "a\\\\b_"),  # \ is literal
        ("*%25_%5C?*", "%\\%\\_\\\\_%"),
        ("**", "%%"),
    ],
)
def test_like_metacharacters_are_escaped_before_wildcards_are_translated(value: str, pattern: str) -> None:
    s = sql_for(f"AccessionNumber={value}")
    assert "st.accession_number LIKE $2" in s.page
    assert s.page_args[1] == pattern


def test_single_values_with_like_metacharacters_use_equality_unescaped() -> None:
    s = sql_for("AccessionNumber=100%25_a")
    assert "st.accession_number = $2" in s.page and "LIKE" not in s.page
    assert s.page_args[1] == "100%_a"


def test_study_level_statement() -> None:
    s = sql_for("PatientID=P1&limit=5&offset=10", STUDIES, tenant="acme")
    assert s.page.startswith("SELECT st.pk, st.study_uid, st.attrs::text AS study_attrs")
    assert "FROM study st WHERE st.tenant = $1 AND st.patient_id = $2" in s.page
    assert s.page.endswith("ORDER BY st.pk LIMIT $3 OFFSET $4")
    assert s.page_args == ["acme", "P1", 6, 10]
    assert s.count == ("SELECT count(*) FROM study st WHERE st.tenant = $1 AND st.patient_id = $2")
    assert s.count_args == ["acme", "P1"]


def test_series_level_statement_scoped_to_a_study() -> None:
    s = sql_for("Modality=MR", STUDY_SERIES, study_uid=UID1)
    assert "FROM series se JOIN study st ON st.pk = se.study_pk" in s.page
    assert "se.study_pk = (SELECT pk FROM study WHERE tenant = $1 AND study_uid = $2)" in s.page
    assert "ORDER BY se.pk" in s.page
    assert s.count_args == ["t", UID1, "MR"]


def test_instance_level_statement_scoped_to_a_series() -> None:
    s = sql_for("InstanceNumber=2", SERIES_INSTANCES, study_uid=UID1, series_uid=UID2)
    assert "i.study_pk = (SELECT pk FROM study WHERE tenant = $1 AND study_uid = $2)" in s.page
    assert "i.series_pk = (SELECT pk FROM series WHERE tenant = $1 AND series_uid = $3)" in s.page
    assert "i.instance_number = $4" in s.page
    assert s.count_args == ["t", UID1, UID2, 2]


def test_instance_metadata_is_narrowed_to_the_returned_attributes() -> None:
    s = sql_for("PatientName=x&includefield=00280004", INSTANCES)
    assert "jsonb_each(i.metadata)" in s.page
    (wanted,) = [a for a in s.page_args if isinstance(a, list)]
    assert wanted == sorted(INSTANCE_METADATA | {"00100010", "00280004"})
    assert "jsonb_each" not in s.count
    s = sql_for("includefield=all", INSTANCES)
    assert "i.metadata::text AS metadata" in s.page
    assert not any(isinstance(a, list) for a in s.page_args)


@pytest.mark.parametrize(("resource", "key"), [(STUDIES, "st"), (SERIES, "se"), (INSTANCES, "i")])
def test_keyset_after_pk_replaces_the_offset(resource: Resource, key: str) -> None:
    plain = sql_for("limit=10&offset=40", resource)
    assert plain.page_args[-2:] == [11, 40]
    keyset = sql_for("limit=10&offset=40", resource, after_pk=12345)
    n = keyset.page_args.index(12345) + 1
    assert f"AND {key}.pk > ${n} ORDER BY {key}.pk" in keyset.page
    assert keyset.page_args[-2:] == [11, 0]
    assert keyset.count == plain.count and keyset.count_args == plain.count_args
    assert f"{key}.pk >" not in keyset.count


# ---------------------------------------------------------------------------
# signature and PageCache


def test_signature_ignores_paging_and_return_keys_but_not_the_conditions() -> None:
    base = signature(parse_query("PatientName=Doe*", STUDIES), "t")
    assert signature(parse_query("PatientName=Doe*&limit=5&offset=10&includefield=all", STUDIES), "t") == base
    assert signature(parse_query("PatientName=Doe*", STUDIES), "other") != base
    assert signature(parse_query("PatientName=Roe*", STUDIES), "t") != base
    assert signature(parse_query("PatientName=Doe*", SERIES), "t") != base
    assert signature(parse_query("PatientName=Doe*", SERIES, study_uid=UID1), "t") != signature(
        parse_query("PatientName=Doe*", SERIES), "t"
    )
    assert signature(parse_query("PatientName=Doe&fuzzymatching=true", STUDIES), "t") != signature(
        parse_query("PatientName=Doe", STUDIES), "t"
    )


def test_page_cache_is_keyed_by_signature_and_offset() -> None:
    cache = PageCache()
    a, b = ("t", 1, "a"), ("t", 1, "b")
    assert cache.get(a, 10) is None
    cache.put(a, 10, 100)
    cache.put(a, 20, 200)
    cache.put(b, 10, 999)
    assert (cache.get(a, 10), cache.get(a, 20), cache.get(b, 10), cache.get(a, 30)) == (100, 200, 999, None)
    cache.put(a, 10, 101)  # a later boundary for the same offset replaces the earlier one
    assert cache.get(a, 10) == 101


def test_page_cache_evicts_the_least_recently_used_entry() -> None:
    cache = PageCache(size=2)
    sig = ("t", 1)
    cache.put(sig, 1, 10)
    cache.put(sig, 2, 20)
    assert cache.get(sig, 1) == 10  # 1 is now the most recently used
    cache.put(sig, 3, 30)  # evicts 2
    assert (cache.get(sig, 1), cache.get(sig, 2), cache.get(sig, 3)) == (10, None, 30)
    cache.put(sig, 4, 40)  # evicts 1 (3 was used after it)
    assert (cache.get(sig, 1), cache.get(sig, 3), cache.get(sig, 4)) == (None, 30, 40)


def test_page_cache_clear() -> None:
    cache = PageCache()
    cache.put(("t",), 5, 50)
    cache.clear()
    assert cache.get(("t",), 5) is None
