"""stow.store_response and stow.store_result: an ingest Outcome mapped to the PS3.18 Store
Instances Response Module as DICOM JSON and to 200/202/409 (pure: no server, no index)."""

from __future__ import annotations

import ast
import inspect
import string
from typing import Any

import orjson
from pydicom.dataset import Dataset

from dicomweb_server.db import store
from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.dicom import structure
from dicomweb_server.dicom.part10 import Failure, Header
from dicomweb_server.dicom.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    REFUSED_OUT_OF_RESOURCES,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)
from dicomweb_server.dicomweb import stow
from dicomweb_server.dicomweb.stow import store_response, store_result
from dicomweb_server.ingest import session
from dicomweb_server.ingest.outcome import Outcome, Stored

BASE = "https://pacs.example/tenant-a"
STUDY = "1.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_URL = f"{BASE}/dicomweb/studies/{STUDY}"


def header(n: int, series: str = "1.2.3.4") -> Header:
    return Header(
        study_uid=STUDY,
        series_uid=series,
        sop_uid=f"1.2.3.4.{n}",
        sop_class_uid=CT,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        dataset=Dataset(),
        pixel_data=None,
    )


def instance_url(h: Header) -> str:
    return f"{BASE}/dicomweb/studies/{h.study_uid}/series/{h.series_uid}/instances/{h.sop_uid}"


def referenced(h: Header) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [CT]},
        "00081155": {"vr": "UI", "Value": [h.sop_uid]},
        "00081190": {"vr": "UR", "Value": [instance_url(h)]},
    }


def test_all_stored() -> None:
    stored = [header(1), header(2, series="1.2.3.5")]
    assert store_response(BASE, STUDY_URL, stored, []) == {
        "00081190": {"vr": "UR", "Value": [STUDY_URL]},
        "00081199": {"vr": "SQ", "Value": [referenced(h) for h in stored]},
    }


def test_retrieve_url_empty_when_none() -> None:
    body = store_response(BASE, None, [header(1)], [])
    assert body["00081190"] == {"vr": "UR"}
    body = store_response(BASE, "", [header(1)], [])
    assert body["00081190"] == {"vr": "UR"}


def test_failures_split_by_whether_the_instance_is_known() -> None:
    identified = [
        Failure(DATASET_DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID is missing", CT, "1.2.9.1"),
        Failure(DUPLICATE_SOP_INSTANCE, "already stored with different content", CT, "1.2.9.2"),
        Failure(DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID is missing", None, "1.2.9.3"),
    ]
    anonymous = [
        Failure(CANNOT_UNDERSTAND, "Not a DICOM PS3.10 file"),
        Failure(DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID is missing", CT, None),
        Failure(TRANSFER_SYNTAX_NOT_SUPPORTED, "Transfer Syntax 1.2.3 is not supported"),
    ]
    mixed = [anonymous[0], identified[0], anonymous[1], identified[1], identified[2], anonymous[2]]
    body = store_response(BASE, STUDY_URL, [header(1)], mixed)
    assert set(body) == {"00081190", "00081199", "00081198", "0008119A"}
    assert body["00081199"]["Value"] == [referenced(header(1))]
    assert body["00081198"] == {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": [CT]},
                "00081155": {"vr": "UI", "Value": ["1.2.9.1"]},
                "00081197": {"vr": "US", "Value": [0xA900]},
                "00000902": {"vr": "LO", "Value": ["StudyInstanceUID is missing"]},
            },
            {
                "00081150": {"vr": "UI", "Value": [CT]},
                "00081155": {"vr": "UI", "Value": ["1.2.9.2"]},
                "00081197": {"vr": "US", "Value": [0x0111]},
                "00000902": {"vr": "LO", "Value": ["already stored with different content"]},
            },
            {
                "00081150": {"vr": "UI"},
                "00081155": {"vr": "UI", "Value": ["1.2.9.3"]},
                "00081197": {"vr": "US", "Value": [0xA900]},
                "00000902": {"vr": "LO", "Value": ["SOPClassUID is missing"]},
            },
        ],
    }
    assert body["0008119A"] == {
        "vr": "SQ",
        "Value": [
            {
                "00081197": {"vr": "US", "Value": [0xC000]},
                "00000902": {"vr": "LO", "Value": ["Not a DICOM PS3.10 file"]},
            },
            {
                "00081197": {"vr": "US", "Value": [0xA900]},
                "00000902": {"vr": "LO", "Value": ["SOPInstanceUID is missing"]},
            },
            {
                "00081197": {"vr": "US", "Value": [0xC122]},
                "00000902": {"vr": "LO", "Value": ["Transfer Syntax 1.2.3 is not supported"]},
            },
        ],
    }


def test_failure_reasons_are_us_numbers() -> None:
    reasons = [
        REFUSED_OUT_OF_RESOURCES,
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        CANNOT_UNDERSTAND,
        TRANSFER_SYNTAX_NOT_SUPPORTED,
        DUPLICATE_SOP_INSTANCE,
    ]
    body = store_response(BASE, None, [], [Failure(r, "x", CT, f"1.2.{i}") for i, r in enumerate(reasons)])
    values = [item["00081197"] for item in body["00081198"]["Value"]]
    assert values == [{"vr": "US", "Value": [r]} for r in reasons]
    assert all(type(v["Value"][0]) is int and 0 <= v["Value"][0] <= 0xFFFF for v in values)
    assert [r for r in reasons] == [0xA700, 0xA900, 0xC000, 0xC122, 0x0111]


def test_only_failures_has_no_referenced_sequence() -> None:
    body = store_response(BASE, None, [], [Failure(CANNOT_UNDERSTAND, "bad")])
    assert body == {
        "00081190": {"vr": "UR"},
        "0008119A": {
            "vr": "SQ",
            "Value": [
                {"00081197": {"vr": "US", "Value": [0xC000]}, "00000902": {"vr": "LO", "Value": ["bad"]}},
            ],
        },
    }


def test_never_an_empty_sequence() -> None:
    cases = [
        ([], []),
        ([header(1)], []),
        ([], [Failure(CANNOT_UNDERSTAND, "x")]),
        ([], [Failure(CANNOT_UNDERSTAND, "x", CT, "1.2.3")]),
        ([header(1)], [Failure(CANNOT_UNDERSTAND, "x", CT, "1.2.3"), Failure(CANNOT_UNDERSTAND, "y")]),
    ]
    for stored, failed in cases:
        body = store_response(BASE, STUDY_URL, stored, failed)
        for tag in ("00081199", "00081198", "0008119A"):
            if tag in body:
                assert body[tag]["vr"] == "SQ"
                assert body[tag]["Value"], (tag, stored, failed)
        assert ("00081199" in body) == bool(stored)
        assert ("00081198" in body) == any(f.sop_instance_uid for f in failed)
        assert ("0008119A" in body) == any(not f.sop_instance_uid for f in failed)


def test_nothing_at_all() -> None:
    assert store_response(BASE, None, [], []) == {"00081190": {"vr": "UR"}}


def test_error_comment_fits_lo() -> None:
    body = store_response(BASE, None, [], [Failure(CANNOT_UNDERSTAND, "é" * 100)])
    comment = body["0008119A"]["Value"][0]["00000902"]["Value"][0]
    assert comment == "é" * 64


# Error Comments (0000,0902) are LO: 64 characters.  Every comment is a named constant or template.
WORST = {
    "tag": "(FFFF,FFFF)",
    "missing": "4294967295",
    "limit": "4294967295",
    "keyword": max(dicom._REQUIRED, key=len),
    "problem": "not a valid UID",
}
GUARDED = {"uid", "type"}  # unbounded fields: such templates go through dicom.fit with a fallback


def comment_templates() -> dict[str, str]:
    out = {}
    for module in (dicom, structure, session, stow, store):
        for name, value in vars(module).items():
            if name.endswith(("_COMMENT", "_FALLBACK")) and isinstance(value, str):
                out[f"{module.__name__}.{name}"] = value
    return out


def test_every_error_comment_fits_lo_and_is_complete() -> None:
    templates = comment_templates()
    assert len(templates) > 25
    for name, template in templates.items():
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if fields & GUARDED:
            continue
        text = template.format(**{f: WORST[f] for f in fields})
        assert len(text) <= 64, (name, text)
        assert not text.endswith((" ", ",", ":")), (name, text)
    assert len(dicom.fit("Transfer Syntax 1.2.840.10008.1.2.4.201 is not supported", "x")) <= 64
    assert dicom.fit(dicom.TS_NOT_SUPPORTED_COMMENT.format(uid="1." * 31 + "1"), "fallback") == "fallback"


def test_failures_are_built_from_named_comments_only() -> None:
    """No Failure(...) takes an f-string or a literal: only the named (and checked) comments."""
    for module in (dicom, structure, session, stow, store):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "Failure"
                and len(node.args) > 1
            ):
                assert not isinstance(node.args[1], ast.JoinedStr | ast.Constant), (
                    module.__name__,
                    ast.unparse(node),
                )


def test_duplicate_comment_names_the_setting() -> None:
    assert "DICOMWEB_DUPLICATE_POLICY" in store.DUPLICATE_COMMENT
    assert len(store.DUPLICATE_COMMENT) <= 64


def test_error_comment_is_cut_at_64_only_as_a_last_resort() -> None:
    body = store_response(BASE, None, [], [Failure(CANNOT_UNDERSTAND, "x" * 100)])
    assert body["0008119A"]["Value"][0]["00000902"]["Value"] == ["x" * 64]


def stored(n: int, study: str = STUDY) -> Stored:
    return Stored(CT, f"1.2.3.4.{n}", study, "1.2.3.4", 1000 + n)


def test_all_stored_is_200_with_the_study_as_content_location() -> None:
    r = store_result(BASE, None, Outcome((stored(1), stored(2))))
    assert r.status_code == 200
    assert r.headers["content-location"] == STUDY_URL
    assert r.headers["content-type"] == "application/dicom+json"
    assert r.study_uid == STUDY
    assert orjson.loads(r.body)["00081190"] == {"vr": "UR", "Value": [STUDY_URL]}


def test_some_stored_is_202_none_stored_is_409() -> None:
    failure = Failure(CANNOT_UNDERSTAND, "bad")
    partly = store_result(BASE, None, Outcome((stored(1),), (failure,)))
    assert partly.status_code == 202 and partly.headers["content-location"] == STUDY_URL
    none = store_result(BASE, None, Outcome((), (failure,)))
    assert none.status_code == 409 and "content-location" not in none.headers
    assert none.study_uid is None
    assert orjson.loads(none.body)["00081190"] == {"vr": "UR"}


def test_the_study_in_the_url_names_the_response_even_when_nothing_was_stored() -> None:
    r = store_result(BASE, STUDY, Outcome((), (Failure(CANNOT_UNDERSTAND, "bad"),)))
    assert r.status_code == 409
    assert orjson.loads(r.body)["00081190"] == {"vr": "UR", "Value": [STUDY_URL]}
    assert "content-location" not in r.headers  # nothing stored: nothing to point at
    assert r.study_uid == STUDY


def test_instances_of_two_studies_name_no_study() -> None:
    r = store_result(BASE, None, Outcome((stored(1), stored(2, study="1.2.9"))))
    assert r.status_code == 200
    assert "content-location" not in r.headers and r.study_uid is None
    body = orjson.loads(r.body)
    assert body["00081190"] == {"vr": "UR"}
    assert [item["00081190"]["Value"][0] for item in body["00081199"]["Value"]] == [
        f"{BASE}/dicomweb/studies/{STUDY}/series/1.2.3.4/instances/1.2.3.4.1",
        f"{BASE}/dicomweb/studies/1.2.9/series/1.2.3.4/instances/1.2.3.4.2",
    ]


async def test_the_study_travels_on_the_start_message_for_the_audit_trail() -> None:
    """The audit reads the study from the response, not from a side channel on the request."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        messages.append(dict(message))

    await store_result(BASE, None, Outcome((stored(1),)))({"type": "http"}, receive, send)
    assert messages[0]["type"] == "http.response.start"
    assert messages[0][stow.STUDY_UID] == STUDY
    assert stow.STUDY_UID not in messages[1]
