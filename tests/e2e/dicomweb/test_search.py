"""QIDO-RS (PS3.18 §10.6) end to end: exact result sets over a deliberate corpus, through ASGI and a socket.

The corpus (tests/e2e/search_corpus.py) is stored once per module in a database of its own, so the
other tests' truncation of the shared test database cannot touch it; the dicomweb-client tests use
``live_server`` and store it again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import httpx
import pytest

from dicomweb_server.cli import migrate
from dicomweb_server.db.search import signature
from dicomweb_server.dicom.query import Resource, parse_query
from dicomweb_server.dicom.resources import Level
from tests.conftest import TENANT, App, Server, admin_sql, make_settings, running_app
from tests.support import search_corpus as c
from tests.support.dicomfiles import content_type, multipart
from tests.support.search_corpus import (
    ALL_INSTANCES,
    ALL_SERIES,
    ALL_STUDIES,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    SE11,
    SE12,
    SE21,
    SE31,
    SE41,
    SE51,
    SE61,
    sop,
    sops,
)

STUDIES = "/dicomweb/studies"
SERIES = "/dicomweb/series"
INSTANCES = "/dicomweb/instances"
NATIVE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
MR_CLASS, CT_CLASS, US_CLASS = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.6.1",
)
UID_TAG = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}


@pytest.fixture(scope="module")
def corpus_database_url(database_url: str) -> Iterator[str]:
    """A database of this module's own in the test PostgreSQL server."""
    name = f"qido_corpus_{uuid.uuid4().hex[:8]}"
    admin_sql(database_url, f"CREATE DATABASE {name}")
    url = urlsplit(database_url)._replace(path="/" + name).geturl()
    migrate(url)
    yield url
    admin_sql(database_url, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
async def corpus(corpus_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    """The app over ASGI with the search corpus stored (read-only for the tests)."""
    settings = make_settings(corpus_database_url, tmp_path_factory.mktemp("qido") / "objects")
    async with running_app(settings) as app:
        r = await app.client.post(
            STUDIES, content=multipart(c.files()), headers={"Content-Type": content_type()}
        )
        assert r.status_code == 200, r.text
        yield app


def level_of(path: str) -> str:
    return urlsplit(path).path.rsplit("/", 1)[1]


def uid_list(results: list[dict[str, Any]], tag: str) -> list[str]:
    return [r[tag]["Value"][0] for r in results]


async def search(app: App, path: str, **kw: Any) -> httpx.Response:
    r = await app.client.get(path, **kw)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r


async def found(app: App, path: str) -> list[str]:
    """The UIDs of the level searched, in response order."""
    r = await search(app, path)
    assert r.headers["content-type"] == "application/dicom+json"
    return uid_list(r.json(), UID_TAG[level_of(path)])


async def exactly(app: App, path: str, expected: frozenset[str] | set[str]) -> None:
    got = await found(app, path)
    assert len(got) == len(set(got)), f"duplicates in {path}: {got}"
    assert set(got) == set(expected), path


def by_uid(results: list[dict[str, Any]], tag: str) -> dict[str, dict[str, Any]]:
    return {r[tag]["Value"][0]: r for r in results}


def value(res: dict[str, Any], tag: str) -> Any:
    return res[tag].get("Value")


def warning(remaining: int) -> str:
    return f'299 http://testserver: "There are {remaining} additional results that can be requested"'


# ---------------------------------------------------------------------------
# Exact result sets: every required matching attribute (Table 10.6.1-5) at every level that accepts
# it (Table 10.6.1-4), each matching kind.

STUDY_MATCHES = [
    # universal
    ("", ALL_STUDIES),
    ("PatientName=", ALL_STUDIES),
    ("PatientName=*", ALL_STUDIES),
    ("PatientName=%2A", ALL_STUDIES),
    ("StudyDate=", ALL_STUDIES),
    # StudyDate: single, closed, open-ended both sides
    ("StudyDate=20240220", {S2, S3}),
    ("StudyDate=2024.02.20", {S2, S3}),
    ("StudyDate=20240101-20240131", {S1}),
    ("StudyDate=20240115-20240220", {S1, S2, S3}),  # both ends inclusive
    ("StudyDate=20240201-", {S2, S3, S5}),
    ("StudyDate=-20231231", {S4}),
    ("StudyDate=19000101-", ALL_STUDIES - {S6}),  # no date: no range match
    ("StudyDate=20300101-", set()),
    # StudyTime
    ("StudyTime=083000", {S1}),
    ("StudyTime=0830", {S1}),
    ("StudyTime=08:30:00", {S1}),
    ("StudyTime=090000-150000", {S2, S3, S5}),
    ("StudyTime=-0900", {S1}),
    ("StudyTime=2300-", {S4}),
    ("StudyTime=-2359", {S1, S2, S3, S4, S5}),  # the upper end covers its whole minute
    ("StudyTime=12-", {S2, S4, S5}),
    # StudyDate + StudyTime ranges: one date-time range (PS3.4 C.2.2.2.5.1)
    ("StudyDate=20240115-20240220&StudyTime=120000-100000", {S3}),
    ("StudyDate=20231231-20240220&StudyTime=2300-0900", {S4, S1}),
    ("StudyDate=20240115-20240220&StudyTime=0900-1400", {S3}),
    ("StudyDate=20240220-&StudyTime=1200-", {S2, S5}),
    # a date range with a single time: two separate conditions
    ("StudyDate=20240101-20241231&StudyTime=091000", {S3}),
    # AccessionNumber: single, wildcard, LIKE metacharacters are literals; '+' is a space, %2B a plus
    ("AccessionNumber=ACC-001", {S1}),
    ("AccessionNumber=acc-001", set()),
    ("AccessionNumber=AC*", {S1, S2, S3, S4}),
    ("AccessionNumber=AC?1", {S2, S3, S4}),
    ("AccessionNumber=AC_*", {S2}),
    ("AccessionNumber=AC_1", {S2}),
    ("AccessionNumber=AC%25*", {S4}),
    ("AccessionNumber=AC%251", {S4}),
    ("AccessionNumber=*1", ALL_STUDIES),
    ("AccessionNumber=A+1", {S6}),
    ("AccessionNumber=A%2B1", {S5}),
    ("AccessionNumber=A%201", {S6}),
    ("AccessionNumber=A?1", {S5, S6}),
    # ModalitiesInStudy: single, list (comma and backslash), wildcard
    ("ModalitiesInStudy=MR", {S1, S3, S5}),
    ("ModalitiesInStudy=CT", {S1, S2, S4}),
    ("ModalitiesInStudy=CT,US", {S1, S2, S4, S6}),
    ("ModalitiesInStudy=CT%5CUS", {S1, S2, S4, S6}),
    ("ModalitiesInStudy=U*", {S6}),
    ("ModalitiesInStudy=?R", {S1, S3, S5}),
    ("ModalitiesInStudy=XA", set()),
    # ReferringPhysicianName (PN, folded)
    ("ReferringPhysicianName=House^Gregory", {S1, S4}),
    ("ReferringPhysicianName=HOUSE%5Egregory", {S1, S4}),
    ("ReferringPhysicianName=*james", {S2}),
    ("ReferringPhysicianName=m%C3%BCller*", {S3}),
    ("ReferringPhysicianName=muller*", {S3}),
    ("ReferringPhysicianName=*%E4%BD%90%E8%97%A4*", {S5}),  # 佐藤
    # PatientName: case- and accent-insensitive, percent-decoding, wildcards
    ("PatientName=Doe^Jane", {S1, S2}),
    ("PatientName=Doe%5EJane", {S1, S2}),
    ("PatientName=doe%5Ejane", {S1, S2}),
    ("PatientName=Doe*", {S1, S2, S6}),
    ("PatientName=Doe%2A", {S1, S2, S6}),
    ("PatientName=Doe^J?ne", {S1, S2}),
    ("PatientName=*^Jo*", {S6}),
    ("PatientName=muller*", {S3, S4}),
    ("PatientName=M%C3%BCller*", {S3, S4}),
    ("PatientName=M%C3%9CLLER%5EJ%C3%9CRGEN", {S3, S4}),
    ("PatientName=muller%5Ejurgen", {S3, S4}),
    ("PatientName=Yamada*", {S5}),
    ("PatientName=*%E5%B1%B1%E7%94%B0*", {S5}),  # 山田
    ("PatientName=*%E3%82%84%E3%81%BE%E3%81%A0*", {S5}),  # やまだ
    ("PatientName=Yamada^Tarou=%E5%B1%B1%E7%94%B0^%E5%A4%AA%E9%83%8E=*", {S5}),
    ("PatientName=jur", set()),  # no fuzzy matching unless asked for
    # PatientID, StudyInstanceUID (single and lists), StudyID
    ("PatientID=PID-DOE", {S1, S2}),
    ("PatientID=PID-*", ALL_STUDIES),
    ("PatientID=pid-doe", set()),
    (f"StudyInstanceUID={S3}", {S3}),
    (f"StudyInstanceUID={S1},{S3}", {S1, S3}),
    (f"StudyInstanceUID={S1}%5C{S3}%5C{S5}", {S1, S3, S5}),
    (f"StudyInstanceUID={S1}%2C2.25.999", {S1}),
    ("StudyInstanceUID=2.25.999", set()),
    (f"0020000D={S2}", {S2}),
    ("StudyID=SID2", {S2}),
    ("StudyID=SID?", ALL_STUDIES),
    # the other study attributes of the table
    ("PatientBirthDate=19750505", {S3, S4}),
    ("PatientBirthDate=-19791231", {S3, S4}),
    ("PatientSex=M", {S3, S4, S5}),
    ("00100040=O", {S6}),
    ("StudyDescription=*CT", {S2}),
    # several keys: all must match
    ("PatientName=Doe*&StudyDate=20240220", {S2}),
    ("PatientID=PID-MUE&ModalitiesInStudy=CT", {S4}),
    ("PatientName=muller*&AccessionNumber=AC_1", set()),
]

SERIES_MATCHES = [
    ("", ALL_SERIES),
    ("Modality=MR", {SE11, SE31, SE51}),
    ("Modality=CT", {SE12, SE21, SE41}),
    ("Modality=C?", {SE12, SE21, SE41}),
    ("Modality=mr", set()),
    ("00080060=US", {SE61}),
    (f"SeriesInstanceUID={SE12}", {SE12}),
    (f"SeriesInstanceUID={SE12},{SE61}", {SE12, SE61}),
    (f"0020000E={SE12}%5C{SE31}", {SE12, SE31}),
    ("SeriesNumber=1", {SE11, SE21, SE41}),
    ("SeriesNumber=+5", {SE31}),
    ("SeriesNumber=05", {SE31}),
    ("SeriesNumber=", ALL_SERIES),
    ("SeriesNumber=99", set()),
    ("PerformedProcedureStepStartDate=20240220", {SE21, SE31}),
    ("PerformedProcedureStepStartDate=20240101-20240131", {SE11, SE12}),
    ("PerformedProcedureStepStartDate=20240201-", {SE21, SE31, SE51}),
    ("00400244=-20231231", {SE41}),
    ("PerformedProcedureStepStartTime=141600", {SE21}),
    ("PerformedProcedureStepStartTime=0900-1000", {SE12, SE31}),
    ("PerformedProcedureStepStartTime=-0835", {SE11}),
    (
        "PerformedProcedureStepStartDate=20240115-20240220&PerformedProcedureStepStartTime=083600-141500",
        {SE12, SE31},
    ),
    ("RequestAttributesSequence.RequestedProcedureID=RP-101", {SE12}),
    ("RequestAttributesSequence.RequestedProcedureID=RP-102", {SE12}),  # any item matches
    ("RequestAttributesSequence.RequestedProcedureID=RP-10*", {SE11, SE12}),
    ("RequestAttributesSequence.RequestedProcedureID=RP-999", set()),
    ("00400275.00401001=RP-300", {SE31}),
    ("RequestAttributesSequence.ScheduledProcedureStepID=SPS-102", {SE12}),
    ("00400275.00400009=SPS-?00", {SE11, SE31}),
    ("RequestAttributesSequence.00400009=*", ALL_SERIES),
    # study attributes on /series
    ("PatientName=muller*", {SE31, SE41}),
    ("StudyDate=20240220", {SE21, SE31}),
    (f"StudyInstanceUID={S1}", {SE11, SE12}),
    ("ModalitiesInStudy=CT", {SE11, SE12, SE21, SE41}),
    ("PatientID=PID-DOE&Modality=CT", {SE12, SE21}),
    ("AccessionNumber=A%201&Modality=US", {SE61}),
]

INSTANCE_MATCHES = [
    ("", ALL_INSTANCES),
    (f"SOPClassUID={MR_CLASS}", sops(SE11, SE31, SE51)),
    (f"SOPClassUID={CT_CLASS},{US_CLASS}", sops(SE12, SE21, SE41, SE61)),
    (f"00080016={US_CLASS}", sops(SE61)),
    (f"SOPInstanceUID={sop(SE51, 7)}", {sop(SE51, 7)}),
    (f"SOPInstanceUID={sop(SE51, 7)}%5C{sop(SE11, 1)}", {sop(SE51, 7), sop(SE11, 1)}),
    ("InstanceNumber=2", {sop(SE11, 2), sop(SE21, 2), sop(SE51, 2)}),
    ("InstanceNumber=12", {sop(SE51, 12)}),
    ("00200013=3", {sop(SE11, 3), sop(SE51, 3)}),
    ("InstanceNumber=", ALL_INSTANCES),
    # series and study attributes on /instances
    ("Modality=CT", sops(SE12, SE21, SE41)),
    ("PatientName=doe*&Modality=CT", sops(SE12, SE21)),
    ("StudyDate=20240220&InstanceNumber=1", {sop(SE21, 1), sop(SE31, 1)}),
    ("RequestAttributesSequence.RequestedProcedureID=RP-1*", sops(SE11, SE12)),
    ("AccessionNumber=A%201", sops(SE61)),
    (f"SeriesInstanceUID={SE51}&InstanceNumber=10", {sop(SE51, 10)}),
]

SCOPED_MATCHES = [
    (f"{STUDIES}/{S1}/series", {SE11, SE12}),
    (f"{STUDIES}/{S1}/series?Modality=CT", {SE12}),
    (f"{STUDIES}/{S1}/series?SeriesNumber=1", {SE11}),
    (f"{STUDIES}/{S1}/series?RequestAttributesSequence.ScheduledProcedureStepID=SPS-101", {SE12}),
    (f"{STUDIES}/{S5}/series?Modality=CT", set()),
    (f"{STUDIES}/2.25.999/series", set()),
    (f"{STUDIES}/{S1}/instances", sops(SE11, SE12)),
    (f"{STUDIES}/{S1}/instances?Modality=MR", sops(SE11)),
    (f"{STUDIES}/{S1}/instances?InstanceNumber=1", {sop(SE11, 1), sop(SE12, 1)}),
    (f"{STUDIES}/{S1}/instances?SOPClassUID={CT_CLASS}", sops(SE12)),
    (f"{STUDIES}/{S1}/series/{SE11}/instances", sops(SE11)),
    (f"{STUDIES}/{S1}/series/{SE11}/instances?InstanceNumber=2", {sop(SE11, 2)}),
    (f"{STUDIES}/{S5}/series/{SE51}/instances?SOPInstanceUID={sop(SE51, 9)}", {sop(SE51, 9)}),
    (f"{STUDIES}/{S2}/series/{SE11}/instances", set()),  # the series is not in that study
]

FUZZY_MATCHES = [
    (f"{STUDIES}?PatientName=jur&fuzzymatching=true", {S3, S4}),
    (f"{STUDIES}?PatientName=J%C3%BCrg&fuzzymatching=true", {S3, S4}),
    (f"{STUDIES}?PatientName=jane%20doe&fuzzymatching=true", {S1, S2}),
    (f"{STUDIES}?PatientName=do&fuzzymatching=true", {S1, S2, S6}),
    (f"{STUDIES}?PatientName=ane&fuzzymatching=true", set()),  # words match from their start
    (f"{STUDIES}?PatientName=tarou&fuzzymatching=true", {S5}),
    (f"{STUDIES}?PatientName=%E5%A4%AA%E9%83%8E&fuzzymatching=true", {S5}),  # 太郎
    (f"{STUDIES}?PatientName=%E3%82%84%E3%81%BE%E3%81%A0&fuzzymatching=true", {S5}),  # やまだ
    (f"{STUDIES}?ReferringPhysicianName=greg&fuzzymatching=true", {S1, S4}),
    (f"{STUDIES}?PatientName=Doe*&fuzzymatching=true", {S1, S2, S6}),  # wildcards stay wildcards
    (f"{STUDIES}?PatientName=jur&fuzzymatching=false", set()),
    (f"{SERIES}?PatientName=jur&fuzzymatching=true", {SE31, SE41}),
    (f"{INSTANCES}?PatientName=mul&Modality=CT&fuzzymatching=true", sops(SE41)),
]


def _cases(prefix: str, cases: list[tuple[str, Any]]) -> list[Any]:
    return [pytest.param(f"{prefix}?{q}" if q else prefix, set(e), id=q or "all") for q, e in cases]


@pytest.mark.parametrize(
    ("path", "expected"),
    _cases(STUDIES, STUDY_MATCHES)
    + _cases(SERIES, SERIES_MATCHES)
    + _cases(INSTANCES, INSTANCE_MATCHES)
    + [pytest.param(p, set(e), id=p.removeprefix(STUDIES)) for p, e in SCOPED_MATCHES + FUZZY_MATCHES],
)
async def test_exact_result_sets(corpus: App, path: str, expected: set[str]) -> None:
    await exactly(corpus, path, expected)


async def test_alphabetic_name_finds_a_name_with_ideographic_and_phonetic_groups(corpus: App) -> None:
    await exactly(corpus, f"{STUDIES}?PatientName=Yamada^Tarou", {S5})


async def test_a_seven_digit_date_is_a_400(corpus: App) -> None:
    r = await corpus.client.get(f"{STUDIES}?StudyDate=2024115-")
    assert r.status_code == 400, r.text


async def test_the_same_attribute_by_keyword_and_tag_is_a_400(corpus: App) -> None:
    r = await corpus.client.get(f"{STUDIES}?PatientName=Doe*&00100010=Muller*")
    assert r.status_code == 400, r.text


async def test_an_integer_beyond_the_column_range_is_a_400(corpus: App) -> None:
    r = await corpus.client.get(f"{SERIES}?SeriesNumber=9999999999")
    assert r.status_code == 400, r.text


async def test_a_non_ascii_digit_limit_is_a_400(corpus: App) -> None:
    r = await corpus.client.get(f"{STUDIES}?limit=%C2%B2")
    assert r.status_code == 400, r.text


async def test_request_attributes_sequence_as_a_return_key(corpus: App) -> None:
    r = await search(corpus, f"{SERIES}?RequestAttributesSequence=")
    assert len(r.json()) == len(ALL_SERIES)


# ---------------------------------------------------------------------------
# What the results carry


async def test_study_results_carry_the_required_attributes_and_aggregates(corpus: App) -> None:
    results = by_uid((await search(corpus, STUDIES)).json(), "0020000D")
    assert set(results) == ALL_STUDIES
    aggregates = {
        uid: (value(r, "00201206"), value(r, "00201208"), value(r, "00080061")) for uid, r in results.items()
    }
    assert aggregates == {
        S1: ([2], [4], ["CT", "MR"]),
        S2: ([1], [2], ["CT"]),
        S3: ([1], [1], ["MR"]),
        S4: ([1], [1], ["CT"]),
        S5: ([1], [12], ["MR"]),
        S6: ([1], [1], ["US"]),
    }
    required = {"00080020", "00080030", "00080050", "00080061", "00080090", "00081190", "00100010"}
    required |= {"00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208"}
    for uid, r in results.items():
        assert required <= set(r), uid
        assert list(r) == sorted(r)
        assert value(r, "00081190") == [f"http://testserver/dicomweb/studies/{uid}"]
        assert value(r, "00080056") == ["ONLINE"]
        assert not {"00080060", "0020000E", "00080018"} & set(r)  # no series or instance attributes
    s1 = results[S1]
    assert value(s1, "00080020") == ["20240115"]
    assert value(s1, "00080030") == ["083000"]
    assert value(s1, "00080050") == ["ACC-001"]
    assert value(s1, "00080090") == [{"Alphabetic": "House^Gregory"}]
    assert value(s1, "00100010") == [{"Alphabetic": "Doe^Jane"}]
    assert value(s1, "00100020") == ["PID-DOE"]
    assert value(s1, "00100030") == ["19800101"]
    assert value(s1, "00100040") == ["F"]
    assert value(s1, "00200010") == ["SID1"]
    # unknown required attributes are present and empty
    s6 = results[S6]
    for tag, vr in [("00080020", "DA"), ("00080030", "TM"), ("00080090", "PN"), ("00100030", "DA")]:
        assert s6[tag] == {"vr": vr}, tag


async def test_non_ascii_names_round_trip_intact(corpus: App) -> None:
    r = await search(corpus, STUDIES)
    assert "Müller^Jürgen".encode() in r.content
    assert "山田^太郎".encode() in r.content
    results = by_uid(r.json(), "0020000D")
    for uid in (S3, S4):  # ISO_IR 192 and ISO_IR 100 on the wire, the same name in JSON
        assert value(results[uid], "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
    assert value(results[S3], "00080090") == [{"Alphabetic": "Müller^Anna"}]
    assert value(results[S5], "00100010") == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert value(results[S5], "00080090") == [
        {"Alphabetic": "Sato^Hanako", "Ideographic": "佐藤^花子", "Phonetic": "さとう^はなこ"}
    ]
    assert value(results[S3], "00080005") == ["ISO_IR 192"]
    assert value(results[S4], "00080005") == ["ISO_IR 100"]


async def test_series_results_carry_study_attributes(corpus: App) -> None:
    results = by_uid((await search(corpus, SERIES)).json(), "0020000E")
    assert set(results) == ALL_SERIES
    assert {uid: value(r, "00201209") for uid, r in results.items()} == {
        SE11: [3],
        SE12: [1],
        SE21: [2],
        SE31: [1],
        SE41: [1],
        SE51: [12],
        SE61: [1],
    }
    se31 = results[SE31]
    assert value(se31, "0020000D") == [S3]
    assert value(se31, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
    assert value(se31, "00080020") == ["20240220"]
    assert value(se31, "00080061") == ["MR"]
    assert value(se31, "00201206") == [1]
    assert value(se31, "00080060") == ["MR"]
    assert value(se31, "00200011") == [5]
    assert value(se31, "00400244") == ["20240220"]
    assert value(se31, "00400245") == ["091500"]
    assert value(se31, "00081190") == [f"http://testserver/dicomweb/studies/{S3}/series/{SE31}"]
    se12 = results[SE12]
    items = value(se12, "00400275")
    assert [(value(i, "00401001"), value(i, "00400009")) for i in items] == [
        (["RP-101"], ["SPS-101"]),
        (["RP-102"], ["SPS-102"]),
    ]
    assert value(results[SE11], "0008103E") == ["T1 AX"]
    assert results[SE61]["00200011"] == {"vr": "IS"}  # unknown series number: present, empty
    for r in results.values():
        assert list(r) == sorted(r)
        assert "00080018" not in r and "00200013" not in r  # no instance attributes
        assert "00080070" not in r  # Manufacturer was not asked for


async def test_instance_results_carry_study_and_series_attributes(corpus: App) -> None:
    results = by_uid((await search(corpus, INSTANCES)).json(), "00080018")
    assert set(results) == ALL_INSTANCES
    r = results[sop(SE12, 1)]
    assert value(r, "00080016") == [CT_CLASS]
    assert value(r, "00200013") == [1]
    assert value(r, "00280010") == [8] and value(r, "00280011") == [8] and value(r, "00280100") == [16]
    assert value(r, "00083002") == ["1.2.840.10008.1.2.1"]
    assert value(r, "00080056") == ["ONLINE"]
    assert value(r, "00081190") == [
        f"http://testserver/dicomweb/studies/{S1}/series/{SE12}/instances/{sop(SE12, 1)}"
    ]
    # series level
    assert value(r, "0020000E") == [SE12]
    assert value(r, "00080060") == ["CT"]
    assert value(r, "00200011") == [2]
    assert value(r, "00201209") == [1]
    assert len(value(r, "00400275")) == 2
    # study level
    assert value(r, "0020000D") == [S1]
    assert value(r, "00100010") == [{"Alphabetic": "Doe^Jane"}]
    assert value(r, "00080050") == ["ACC-001"]
    assert value(r, "00080061") == ["CT", "MR"]
    assert value(r, "00201206") == [2] and value(r, "00201208") == [4]
    assert results[sop(SE61, 1)]["00200013"] == {"vr": "IS"}
    for res in results.values():
        assert list(res) == sorted(res)
        assert "7FE00010" not in res  # bulk data is never in a search result
        assert "00280004" not in res  # not asked for


async def test_study_instances_results_carry_series_attributes(corpus: App) -> None:
    results = by_uid((await search(corpus, f"{STUDIES}/{S1}/instances")).json(), "00080018")
    assert {uid: value(r, "00080060") for uid, r in results.items()} == {
        sop(SE11, 1): ["MR"],
        sop(SE11, 2): ["MR"],
        sop(SE11, 3): ["MR"],
        sop(SE12, 1): ["CT"],
    }
    assert value(results[sop(SE11, 2)], "0020000E") == [SE11]
    assert value(results[sop(SE11, 2)], "00200011") == [1]


@pytest.mark.parametrize(
    ("query", "present", "absent"),
    [
        ("includefield=StudyDescription", {"00081030"}, {"00101010"}),
        ("includefield=00081030", {"00081030"}, {"00101010"}),
        ("includefield=StudyDescription,PatientAge", {"00081030", "00101010"}, set()),
        ("includefield=StudyDescription%2C00101010", {"00081030", "00101010"}, set()),
        ("includefield=StudyDescription&includefield=00101010", {"00081030", "00101010"}, set()),
        ("includefield=all", {"00081030", "00101010"}, set()),
        ("StudyDescription=", {"00081030"}, {"00101010"}),  # a universal match key is returned
        ("", set(), {"00081030", "00101010"}),
        # a study result never carries series or instance attributes, even when asked for
        ("includefield=Manufacturer,SeriesDescription,SOPInstanceUID", set(), {"00080070", "0008103E"}),
    ],
)
async def test_includefield_on_studies(corpus: App, query: str, present: set[str], absent: set[str]) -> None:
    (r,) = (await search(corpus, f"{STUDIES}?StudyInstanceUID={S1}&{query}")).json()
    assert present <= set(r)
    assert not absent & set(r)
    assert not {"00080018", "0020000E"} & set(r)
    if "00081030" in present:
        assert value(r, "00081030") == ["Brain MRI"]
    if "00101010" in present:
        assert value(r, "00101010") == ["044Y"]


async def test_includefield_on_series_and_instances(corpus: App) -> None:
    (r,) = (await search(corpus, f"{SERIES}?SeriesInstanceUID={SE11}&includefield=Manufacturer")).json()
    assert value(r, "00080070") == ["ACME"]
    (r,) = (await search(corpus, f"{SERIES}?SeriesInstanceUID={SE11}&includefield=00080070")).json()
    assert value(r, "00080070") == ["ACME"]
    (r,) = (await search(corpus, f"{SERIES}?SeriesInstanceUID={SE11}&includefield=all")).json()
    assert value(r, "00080070") == ["ACME"]
    assert value(r, "00081030") == ["Brain MRI"]  # with all study attributes too
    (r,) = (await search(corpus, f"{SERIES}?SeriesInstanceUID={SE11}&includefield=SOPInstanceUID")).json()
    assert "00080018" not in r  # a series result never carries instance attributes

    one = f"{INSTANCES}?SOPInstanceUID={sop(SE11, 1)}"
    (r,) = (await search(corpus, one)).json()
    assert "00280004" not in r and "00080070" not in r
    (r,) = (await search(corpus, f"{one}&includefield=PhotometricInterpretation")).json()
    assert value(r, "00280004") == ["MONOCHROME2"]
    (r,) = (await search(corpus, f"{one}&includefield=00280004,Manufacturer")).json()
    assert value(r, "00280004") == ["MONOCHROME2"]
    assert value(r, "00080070") == ["ACME"]
    (r,) = (await search(corpus, f"{one}&includefield=all")).json()
    assert value(r, "00280004") == ["MONOCHROME2"]
    assert value(r, "00280002") == [1]
    assert value(r, "00101010") == ["044Y"]
    assert "7FE00010" not in r  # PixelData is bulk data: never in a search result
    (r,) = (await search(corpus, f"{one}&includefield=PixelData")).json()
    assert "7FE00010" not in r


# ---------------------------------------------------------------------------
# Paging (§8.3.4.4)


async def test_paging_is_stable_without_gaps_or_duplicates(corpus: App) -> None:
    full = await found(corpus, INSTANCES)
    assert len(full) == 21 and set(full) == ALL_INSTANCES
    assert await found(corpus, INSTANCES) == full  # the same request, the same order
    pages = []
    for offset, remaining in [(0, 16), (5, 11), (10, 6), (15, 1), (20, None)]:
        r = await search(corpus, f"{INSTANCES}?limit=5&offset={offset}")
        assert r.headers.get("warning") == (None if remaining is None else warning(remaining)), offset
        pages.append(uid_list(r.json(), "00080018"))
    assert [len(p) for p in pages] == [5, 5, 5, 5, 1]
    assert [u for p in pages for u in p] == full


@pytest.mark.parametrize(
    ("path", "header"),
    [
        (f"{INSTANCES}?limit=20", warning(1)),
        (f"{INSTANCES}?limit=21", None),
        (f"{INSTANCES}?limit=22", None),
        (f"{INSTANCES}", None),
        (f"{INSTANCES}?offset=3", None),
        (f"{INSTANCES}?limit=1&offset=19", warning(1)),
        (f"{STUDIES}?limit=1", warning(5)),
        (f"{STUDIES}?limit=2&offset=4", None),  # the last page, exactly full
        (f"{SERIES}?Modality=MR&limit=1", warning(2)),
        (f"{INSTANCES}?Modality=MR&limit=10&offset=2", warning(4)),
        (f"{STUDIES}/{S5}/series/{SE51}/instances?limit=5", warning(7)),
    ],
)
async def test_remaining_results_warning(corpus: App, path: str, header: str | None) -> None:
    r = await search(corpus, path)
    assert r.headers.get("warning") == header


async def test_paging_a_filtered_study_scoped_search(corpus: App) -> None:
    path = f"{STUDIES}/{S5}/instances?Modality=MR"
    full = await found(corpus, path)
    assert set(full) == sops(SE51)
    got: list[str] = []
    for offset in range(0, 12, 5):
        got += await found(corpus, f"{path}&limit=5&offset={offset}")
    assert got == full


async def test_an_offset_past_the_end_is_an_empty_page(corpus: App) -> None:
    for path in (f"{INSTANCES}?offset=21", f"{INSTANCES}?offset=1000&limit=3", f"{STUDIES}?offset=6"):
        r = await search(corpus, path)
        assert r.json() == []
        assert "warning" not in r.headers


async def test_deep_offset_through_the_keyset_cache_gives_the_same_rows(corpus: App) -> None:
    cache = corpus.state.page_cache  # type: ignore[attr-defined]
    resource = Resource(Level.INSTANCE, frozenset(Level))
    sig = signature(parse_query("", resource), TENANT)
    cache.clear()
    full = await found(corpus, INSTANCES)
    cache.clear()
    deep = await search(corpus, f"{INSTANCES}?limit=4&offset=12")  # no boundary known: SQL OFFSET
    assert uid_list(deep.json(), "00080018") == full[12:16]
    cache.clear()
    for offset in (0, 4, 8):  # a client paging forward leaves the boundaries behind
        assert await found(corpus, f"{INSTANCES}?limit=4&offset={offset}") == full[offset : offset + 4]
    assert cache.get(sig, 12) is not None  # the next page starts after a known primary key
    again = await search(corpus, f"{INSTANCES}?limit=4&offset=12")
    assert again.json() == deep.json()
    assert again.headers["warning"] == deep.headers["warning"] == warning(5)
    # another limit from a known boundary
    assert await found(corpus, f"{INSTANCES}?limit=3&offset=8") == full[8:11]
    assert await found(corpus, f"{INSTANCES}?limit=100&offset=4") == full[4:]
    # a different query does not use this query's boundaries
    assert (
        await found(corpus, f"{INSTANCES}?Modality=CT&offset=4")
        == [u for u in full if u in sops(SE12, SE21, SE41)][4:]
    )


async def test_study_paging(corpus: App) -> None:
    full = await found(corpus, STUDIES)
    assert set(full) == ALL_STUDIES
    pages = [await found(corpus, f"{STUDIES}?limit=2&offset={o}") for o in (0, 2, 4)]
    assert [u for p in pages for u in p] == full


# ---------------------------------------------------------------------------
# Empty results, errors, media types


@pytest.mark.parametrize(
    "path",
    [
        f"{STUDIES}?PatientName=Nobody",
        f"{SERIES}?Modality=XA",
        f"{INSTANCES}?InstanceNumber=999",
        f"{STUDIES}/2.25.999/instances",
    ],
)
async def test_no_match_is_200_with_an_empty_array(corpus: App, path: str) -> None:
    r = await corpus.client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    assert r.content == b"[]"
    assert "warning" not in r.headers


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"{STUDIES}?Foo=bar", "Unknown attribute 'Foo'"),
        (f"{STUDIES}?12345678=x", "Unknown attribute tag 12345678"),
        (f"{SERIES}?BodyPartExamined=HEAD", "Matching on BodyPartExamined is not supported"),
        (f"{STUDIES}?PatientName=a&PatientName=b", "Attribute PatientName is given more than once"),
        (f"{STUDIES}?Modality=CT", "Modality is a series-level attribute"),
        (f"{STUDIES}?SOPInstanceUID={sop(SE11, 1)}", "SOPInstanceUID is an instance-level attribute"),
        (f"{SERIES}?InstanceNumber=1", "this resource searches series"),
        (f"{STUDIES}/{S1}/series?SOPClassUID={CT_CLASS}", "SOPClassUID is an instance-level attribute"),
        (f"{STUDIES}?StudyDate=20241301", "StudyDate: '20241301' is not a DICOM date (YYYYMMDD)"),
        (
            f"{STUDIES}?StudyDate=2004-01-01",
            "StudyDate: '2004-01-01' is not a DICOM date (YYYYMMDD) or range (YYYYMMDD-YYYYMMDD)",
        ),
        (f"{STUDIES}?StudyDate=20240101-20230101", "StudyDate: the range ends before it starts"),
        (f"{STUDIES}?StudyTime=1200-1100", "StudyTime: the range ends before it starts"),
        (f"{STUDIES}?StudyDate=%D9%A2%D9%A0%D9%A0%D9%A4%D9%A0%D9%A1%D9%A0%D9%A1", "not a DICOM date"),
        (f"{SERIES}?SeriesNumber=%D9%A3", "SeriesNumber must be an integer (32-bit, ASCII digits)"),
        (f"{STUDIES}?PatientID=a%00b", "'PatientID' contains a control character"),
        (f"{STUDIES}?PatientName=a%0Ab", "'PatientName' contains a control character"),
        (f"{STUDIES}?a%00=b", "contains a control character"),
        (f"{STUDIES}?limit=1&limit=2", "limit is given more than once"),
        (f"{STUDIES}?offset=1&offset=1", "offset is given more than once"),
        (f"{STUDIES}?includefield=PatientName.PatientID", "PatientName is not a sequence"),
        (f"{STUDIES}?includefield=PatientName.", "has an empty attribute in its path"),
        (f"{STUDIES}/1.2.3%00/series", "Study Instance UID '1.2.3\\x00' in the path is not a valid UID"),
        (f"{STUDIES}/%2E%2E/series", "Study Instance UID '..' in the path is not a valid UID"),
        (f"{STUDIES}/{S1}/series/x/instances", "Series Instance UID 'x' in the path is not a valid UID"),
        (f"{STUDIES}?StudyDate=-", "StudyDate: a range needs at least one end"),
        (f"{STUDIES}?StudyTime=2500", "StudyTime: '2500' is not a DICOM time"),
        (f"{STUDIES}?StudyInstanceUID=1.02.3", "'1.02.3' is not a valid UID"),
        (f"{STUDIES}?StudyInstanceUID=2.25.*", "is not a valid UID"),
        (f"{STUDIES}?PatientName=M%FCller", "not valid percent-encoded UTF-8"),
        (f"{SERIES}?SeriesNumber=one", "SeriesNumber must be an integer"),
        (f"{STUDIES}?limit=0", "limit must be at least 1"),
        (f"{STUDIES}?limit=-5", "limit must be a non-negative integer"),
        (f"{STUDIES}?limit=ten", "limit must be a non-negative integer"),
        (f"{STUDIES}?limit=1001", "limit must be at most 1000"),
        (f"{STUDIES}?offset=-1", "offset must be a non-negative integer"),
        (f"{STUDIES}?offset=10000001", "offset must be at most 10000000"),
        (f"{STUDIES}?fuzzymatching=yes", "fuzzymatching must be 'true' or 'false'"),
        (f"{STUDIES}?includefield=NoSuchField", "Unknown attribute 'NoSuchField'"),
        (f"{SERIES}?RequestAttributesSequence.PatientID=x", "Sequence matching on"),
    ],
)
async def test_bad_queries_are_400_with_a_message(corpus: App, path: str, message: str) -> None:
    r = await corpus.client.get(path)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == 400
    assert message in body["message"]


async def test_unacceptable_media_type_is_406(corpus: App) -> None:
    r = await corpus.client.get(STUDIES, headers={"Accept": "image/png"})
    assert r.status_code == 406
    assert "application/dicom+json" in r.json()["message"]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/dicom+json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("*/*", "application/dicom+json"),
        ("image/png, application/json;q=0.5", "application/json"),
    ],
)
async def test_json_media_types(corpus: App, accept: str, media_type: str) -> None:
    r = await search(corpus, f"{STUDIES}?StudyInstanceUID={S3}", headers={"Accept": accept})
    assert r.headers["content-type"] == media_type
    assert uid_list(r.json(), "0020000D") == [S3]


def xml_parts(r: httpx.Response) -> list[ElementTree.Element]:
    ctype = r.headers["content-type"]
    assert ctype.startswith('multipart/related; type="application/dicom+xml"')
    match = re.search(r"boundary=([^;]+)", ctype)
    assert match
    delimiter = b"--" + match.group(1).strip('"').encode()
    chunks = r.content.split(delimiter)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    roots = []
    for chunk in chunks[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type: application/dicom+xml" in head
        assert body.endswith(b"\r\n")
        roots.append(ElementTree.fromstring(body[:-2]))
    return roots


def attribute(root: ElementTree.Element, tag: str) -> ElementTree.Element:
    found = root.find(f"{NATIVE}DicomAttribute[@tag='{tag}']")
    assert found is not None, tag
    return found


async def test_multipart_xml_results(corpus: App) -> None:
    r = await search(
        corpus,
        f"{STUDIES}?PatientName=m%C3%BCller*",
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    roots = xml_parts(r)
    assert [root.tag for root in roots] == [f"{NATIVE}NativeDicomModel"] * 2
    uids = {attribute(root, "0020000D").findtext(f"{NATIVE}Value[@number='1']") for root in roots}
    assert uids == {S3, S4}
    for root in roots:
        name = attribute(root, "00100010")
        assert name.get("vr") == "PN" and name.get("keyword") == "PatientName"
        alphabetic = name.find(f"{NATIVE}PersonName/{NATIVE}Alphabetic")
        assert alphabetic is not None
        assert alphabetic.findtext(f"{NATIVE}FamilyName") == "Müller"
        assert alphabetic.findtext(f"{NATIVE}GivenName") == "Jürgen"
        assert attribute(root, "00201208").findtext(f"{NATIVE}Value") == "1"
        assert attribute(root, "00080020").get("vr") == "DA"


async def test_multipart_xml_ideographic_names_and_sequences(corpus: App) -> None:
    accept = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    (root,) = xml_parts(await search(corpus, f"{SERIES}?SeriesInstanceUID={SE51}", headers=accept))
    name = attribute(root, "00100010").find(f"{NATIVE}PersonName")
    assert name is not None
    assert name.findtext(f"{NATIVE}Ideographic/{NATIVE}FamilyName") == "山田"
    assert name.findtext(f"{NATIVE}Phonetic/{NATIVE}GivenName") == "たろう"
    (root,) = xml_parts(await search(corpus, f"{SERIES}?SeriesInstanceUID={SE12}", headers=accept))
    items = attribute(root, "00400275").findall(f"{NATIVE}Item")
    assert [i.get("number") for i in items] == ["1", "2"]
    assert [attribute(i, "00401001").findtext(f"{NATIVE}Value") for i in items] == ["RP-101", "RP-102"]


async def test_multipart_xml_with_no_results(corpus: App) -> None:
    accept = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    r = await search(corpus, f"{STUDIES}?PatientName=Nobody", headers=accept)
    assert xml_parts(r) == []


# ---------------------------------------------------------------------------
# The accept query parameter (PS3.18 §8.3.3.1, Table 8.3.3.1-2): as on WADO-RS, it overrides
# the Accept header and is not a matching key.


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/dicom%2Bjson", "application/dicom+json"),
        ("application/json", "application/json"),
        ("*/*", "application/dicom+json"),
    ],
)
async def test_accept_parameter_selects_json(corpus: App, accept: str, media_type: str) -> None:
    r = await search(
        corpus, f"{STUDIES}?StudyInstanceUID={S3}&accept={accept}", headers={"Accept": "image/png"}
    )
    assert r.headers["content-type"] == media_type
    assert uid_list(r.json(), "0020000D") == [S3]


async def test_accept_parameter_selects_multipart_xml(corpus: App) -> None:
    accept = quote('multipart/related; type="application/dicom+xml"', safe="")
    r = await search(corpus, f"{STUDIES}?PatientName=m%C3%BCller*&accept={accept}")
    uids = {attribute(root, "0020000D").findtext(f"{NATIVE}Value[@number='1']") for root in xml_parts(r)}
    assert uids == {S3, S4}
    # the same on a scoped resource, and with the bare type parameter
    accept = quote("multipart/related; type=application/dicom+xml", safe="")
    (root,) = xml_parts(await search(corpus, f"{SERIES}?SeriesInstanceUID={SE51}&accept={accept}"))
    assert attribute(root, "0020000E").findtext(f"{NATIVE}Value") == SE51


async def test_accept_parameter_overrides_the_header_and_is_checked(corpus: App) -> None:
    r = await search(
        corpus,
        f"{STUDIES}?StudyInstanceUID={S3}&accept=application/json",
        headers={"Accept": "application/dicom+json"},
    )
    assert r.headers["content-type"] == "application/json"
    r = await corpus.client.get(f"{STUDIES}?accept=image/png", headers={"Accept": "application/json"})
    assert r.status_code == 406, r.text
    assert "application/dicom+json" in r.json()["message"]


# ---------------------------------------------------------------------------
# dicomweb-client over a real socket


def store_corpus(server: Server) -> None:
    r = httpx.post(
        f"{server.url}{STUDIES}",
        content=multipart(c.files()),
        headers={"Content-Type": content_type(), **server.headers},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def uids_of(results: list[dict[str, Any]], tag: str) -> set[str]:
    return set(uid_list(results, tag))


def test_dicomweb_client_searches(live_server: Server) -> None:
    from dicomweb_client.api import DICOMwebClient

    store_corpus(live_server)
    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=live_server.headers)

    studies = client.search_for_studies(search_filters={"PatientName": "Müller*"})
    assert uids_of(studies, "0020000D") == {S3, S4}
    assert {value(s, "00100010")[0]["Alphabetic"] for s in studies} == {"Müller^Jürgen"}
    assert uids_of(client.search_for_studies(search_filters={"PatientName": "Doe^Jane"}), "0020000D") == {
        S1,
        S2,
    }
    assert uids_of(
        client.search_for_studies(search_filters={"PatientName": "jur"}, fuzzymatching=True), "0020000D"
    ) == {S3, S4}
    assert client.search_for_studies(search_filters={"PatientName": "jur"}, fuzzymatching=False) == []
    assert uids_of(
        client.search_for_studies(search_filters={"StudyDate": "20240101-20240131"}), "0020000D"
    ) == {S1}
    assert uids_of(client.search_for_studies(search_filters={"00100020": "PID-MUE"}), "0020000D") == {S3, S4}
    (s1,) = client.search_for_studies(search_filters={"StudyInstanceUID": S1}, fields=["StudyDescription"])
    assert value(s1, "00081030") == ["Brain MRI"]
    assert value(s1, "00201208") == [4]
    assert value(s1, "00080061") == ["CT", "MR"]

    series = client.search_for_series(search_filters={"Modality": "MR"}, fields=["Manufacturer"])
    assert uids_of(series, "0020000E") == {SE11, SE31, SE51}
    assert value(by_uid(series, "0020000E")[SE11], "00080070") == ["ACME"]
    assert uids_of(client.search_for_series(study_instance_uid=S1), "0020000E") == {SE11, SE12}
    assert uids_of(
        client.search_for_series(search_filters={"RequestAttributesSequence.RequestedProcedureID": "RP-10*"}),
        "0020000E",
    ) == {SE11, SE12}

    assert uids_of(
        client.search_for_instances(study_instance_uid=S1, series_instance_uid=SE11), "00080018"
    ) == sops(SE11)
    assert uids_of(
        client.search_for_instances(study_instance_uid=S1, search_filters={"InstanceNumber": 1}), "00080018"
    ) == {sop(SE11, 1), sop(SE12, 1)}
    (inst,) = client.search_for_instances(
        search_filters={"SOPInstanceUID": sop(SE51, 4)}, fields=["PhotometricInterpretation"]
    )
    assert value(inst, "00280004") == ["MONOCHROME2"]
    assert value(inst, "00100010")[0]["Ideographic"] == "山田^太郎"


def test_dicomweb_client_paging_and_errors(live_server: Server) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    store_corpus(live_server)
    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=live_server.headers)
    full = uid_list(client.search_for_instances(), "00080018")
    assert len(full) == 21 and set(full) == ALL_INSTANCES
    page = client.search_for_instances(limit=5, offset=5)
    assert uid_list(page, "00080018") == full[5:10]
    # the client follows the pages itself until an empty one
    assert uid_list(client.search_for_instances(limit=4, get_remaining=True), "00080018") == full
    mr = uid_list(client.search_for_instances(search_filters={"Modality": "MR"}), "00080018")
    paged = client.search_for_instances(search_filters={"Modality": "MR"}, limit=5, get_remaining=True)
    assert uid_list(paged, "00080018") == mr and set(mr) == sops(SE11, SE31, SE51)
    assert client.search_for_studies(search_filters={"PatientName": "Nobody"}) == []

    r = httpx.get(f"{live_server.url}{INSTANCES}?limit=5", headers=live_server.headers, timeout=30)
    assert r.headers["warning"] == (
        f'299 {live_server.url}: "There are 16 additional results that can be requested"'
    )

    with pytest.raises(requests.HTTPError) as info:
        client.search_for_studies(search_filters={"Foo": "bar"})
    assert info.value.response.status_code == 400
    assert "Unknown attribute 'Foo'" in info.value.response.json()["message"]
