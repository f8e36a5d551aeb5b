"""The lifecycle table (lifecycle.py): every move it allows, and every one it refuses, enumerated."""

from __future__ import annotations

import pytest

from dicomweb_server.lifecycle import (
    BEFORE_PROCESSING,
    MOVES,
    OPEN,
    Action,
    Reason,
    Refused,
    Status,
    move,
    study_status,
)

# Every (action, source, reason the source failed for) → target the table allows; written out by hand,
# so a change to the table must change this test too.
ALLOWED = {
    (Action.CREATE, None, None): Status.STABLE,
    **{(Action.REGRESS, s, None): Status.UNSTABLE for s in BEFORE_PROCESSING},
    (Action.SETTLE, Status.UNSTABLE, None): Status.STABLE,
    (Action.QC_PASS, Status.STABLE, None): Status.QC_PASSED,
    (Action.QC_FAIL, Status.STABLE, None): Status.FAILED,
    (Action.QC_OVERRIDE, Status.FAILED, Reason.QC): Status.QC_PASSED,
    (Action.FORWARD, Status.QC_PASSED, None): Status.UPLOADING,
    (Action.FORWARD_FAIL, Status.UPLOADING, None): Status.FAILED,
    (Action.QUEUE, Status.QC_PASSED, None): Status.PENDING,
    (Action.QUEUE, Status.UPLOADING, None): Status.PENDING,
    (Action.CLAIM, Status.PENDING, None): Status.PROCESSING,
    (Action.RELEASE, Status.PROCESSING, None): Status.PENDING,
    (Action.ANALYSIS_FAIL, Status.PROCESSING, None): Status.FAILED,
    (Action.DELIVER, Status.PROCESSING, None): Status.DELIVERED,
    (Action.DELIVERY_FAIL, Status.PROCESSING, None): Status.FAILED,
    **{(Action.CANCEL, s, None): Status.FAILED for s in OPEN},
    (Action.RETRY, Status.FAILED, Reason.QC): Status.STABLE,
    (Action.RETRY, Status.FAILED, Reason.ANALYSIS): Status.PENDING,
    (Action.RETRY, Status.FAILED, Reason.DELIVERY): Status.PROCESSING,
    (Action.RETRY, Status.FAILED, Reason.CANCELLED): Status.STABLE,
    (Action.RETRY, Status.FAILED, Reason.DUPLICATE): Status.STABLE,
}

SOURCES: list[tuple[Status | None, Reason | None]] = [
    (None, None),
    *[(s, None) for s in Status if s != Status.FAILED],
    *[(Status.FAILED, r) for r in Reason],
]


@pytest.mark.parametrize(("action", "source", "reason"), [(a, s, r) for a in Action for s, r in SOURCES])
def test_every_move_is_allowed_or_refused_as_the_table_says(
    action: Action, source: Status | None, reason: Reason | None
) -> None:
    expected = ALLOWED.get((action, source, reason))
    if expected is None:
        with pytest.raises(Refused):
            move(action, source, reason)
    else:
        assert move(action, source, reason).target == expected


def test_a_failure_always_carries_its_reason() -> None:
    failing = {m.action: m.reason for m in MOVES if m.target == Status.FAILED and m.source is not None}
    assert failing == {
        Action.QC_FAIL: Reason.QC,
        Action.FORWARD_FAIL: Reason.DELIVERY,
        Action.ANALYSIS_FAIL: Reason.ANALYSIS,
        Action.DELIVERY_FAIL: Reason.DELIVERY,
        Action.CANCEL: Reason.CANCELLED,
    }
    assert all(m.reason is None for m in MOVES if m.target != Status.FAILED)


def test_nothing_leaves_delivered_and_nothing_reaches_receiving() -> None:
    assert not [m for m in MOVES if m.source == Status.DELIVERED]
    assert not [m for m in MOVES if m.target == Status.RECEIVING]


def test_no_move_is_listed_twice() -> None:
    keys = [(m.action, m.source, m.from_reason) for m in MOVES if m.source is not None]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("receiving", "state", "order", "shown"),
    [
        (True, "stable", "delivered", Status.RECEIVING),
        (False, "unstable", None, Status.UNSTABLE),
        (False, "held", None, Status.UNSTABLE),
        (False, "unstable", "unstable", Status.UNSTABLE),
        (False, "stable", None, Status.STABLE),
        *[(False, "stable", s.value, s) for s in Status if s not in (Status.RECEIVING,)],
    ],
)
def test_a_study_shows_its_own_status_then_its_orders(
    receiving: bool, state: str, order: str | None, shown: Status
) -> None:
    assert study_status(receiving, state, order) == shown


def test_the_table_covers_every_status_pair_it_names() -> None:
    named = {s for m in MOVES for s in (m.source, m.target) if s is not None}
    assert named == set(Status) - {Status.RECEIVING}
