"""The change feed's pure parts (workflow/feed.py): parameters parsed strictly, events as CloudEvents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dicomweb_server import events
from dicomweb_server.errors import BadRequest
from dicomweb_server.workflow import feed
from dicomweb_server.workflow.api import encode_cursor


def test_a_cursor_handed_out_reads_back_and_absent_is_from_the_start() -> None:
    assert feed.cursor_of(encode_cursor(7, 42)) == (7, 42)
    assert feed.cursor_of(None) is None and feed.cursor_of("") is None
    for bad in ("%%", encode_cursor(True, 1), encode_cursor(1.5, 1), encode_cursor(1, 2, 3)):
        with pytest.raises(BadRequest):
            feed.cursor_of(bad)


def test_types_are_known_kinds_without_repeats() -> None:
    assert feed.types_of(None) is None
    assert feed.types_of("study.stable, report.ready,study.stable") == ("study.stable", "report.ready")
    assert feed.types_of(",".join(events.KINDS)) == events.KINDS
    for bad in ("", "study.stable,,report.ready", "STUDY.STABLE", "study.completed"):
        with pytest.raises(BadRequest):
            feed.types_of(bad)


def test_wait_is_seconds_from_0_to_30() -> None:
    assert [feed.wait_of(v) for v in (None, "0", "2.5", "30")] == [0.0, 0.0, 2.5, 30.0]
    for bad in ("", "30.5", "-1", "1e1", "nan", "inf", " 1"):
        with pytest.raises(BadRequest):
            feed.wait_of(bad)


def test_an_event_as_a_cloudevent_hides_the_object_key_and_omits_an_absent_subject() -> None:
    at = datetime(2026, 12, 4, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    stored = events.Event(
        5,
        "t1",
        events.INSTANCE_STORED,
        {"study": "1.2", "series": "1.2.3", "instance": "1.2.3.4", "key": "k"},
        at,
        "1.2",
    )
    assert feed.cloud_event(stored, "t1") == {
        "specversion": "1.0",
        "id": "5",
        "source": "/api/v1/tenants/t1",
        "type": "instance.stored",
        "time": "2026-12-04T10:30:00Z",
        "subject": "1.2",
        "datacontenttype": "application/json",
        "data": {"study": "1.2", "series": "1.2.3", "instance": "1.2.3.4"},
    }
    old = events.Event(6, "t1", events.STUDY_STABLE, {"key": "kept"}, datetime(2026, 1, 1, tzinfo=UTC))
    item = feed.cloud_event(old, "t1")
    assert "subject" not in item and item["data"] == {"key": "kept"}
