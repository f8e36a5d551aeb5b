"""The study and order lifecycle as a table: statuses, failure reasons and every allowed move.

The statuses come from the hospital-facing documentation (README, "Study lifecycle"):
``receiving`` → ``unstable`` → ``stable`` → ``qc_passed`` → ``uploading`` → ``pending`` →
``processing`` → ``delivered``, and ``failed`` (with a reason) from any step after ``stable``.

A study is ``receiving`` or ``unstable`` on its own (its arrival row, db/arrival.py); from
``stable`` on, an order carries it and the study shows its order's status.  An order starts at
``stable``; late instances move it back to ``unstable`` until its studies are stable again.
Every move is one row of ``MOVES``: an action, the status it leaves (``failed`` with the reason
it failed for), the status it reaches.  A transition is a compare-and-set ``UPDATE`` from the
source status (db/orders.py), with its history row and its event, in one transaction; the
unit tests enumerate this table, allowed and refused.  Pure: no I/O, nothing imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The durable step that makes an unstable study stable once due (queued by ingest, run by workflow).
SETTLE_STEP = "study.settle"


class Status(StrEnum):
    RECEIVING = "receiving"  # a request or association carrying the study is open
    UNSTABLE = "unstable"  # nothing open; the quiet period has not passed since the last instance
    STABLE = "stable"  # quiet period passed or committed; QC comes next
    QC_PASSED = "qc_passed"
    UPLOADING = "uploading"  # forwarded to an upstream destination (DICOM networking issue)
    PENDING = "pending"  # waiting for an analysis worker
    PROCESSING = "processing"  # a worker holds the lease, then the deliveries run
    DELIVERED = "delivered"
    FAILED = "failed"


class Reason(StrEnum):
    """Why an order failed (``failed`` always carries one)."""

    QC = "qc"
    ANALYSIS = "analysis"
    DELIVERY = "delivery"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"  # the same study (by digest) is already processing or delivered


class Action(StrEnum):
    CREATE = "create"  # an order over stable studies
    REGRESS = "regress"  # late instances before processing: back to unstable
    SETTLE = "settle"  # every study of a regressed order is stable again
    QC_PASS = "qc_pass"
    QC_FAIL = "qc_fail"
    QC_OVERRIDE = "qc_override"  # an operator accepts a failed QC, with a reason
    FORWARD = "forward"  # qc_passed → uploading, when a forward destination is configured
    QUEUE = "queue"  # → pending: ready for an analysis worker
    CLAIM = "claim"
    RELEASE = "release"  # a lease ran out or a retryable failure, with attempts left
    ANALYSIS_FAIL = "analysis_fail"
    DELIVER = "deliver"  # the report is stored and every delivery succeeded
    DELIVERY_FAIL = "delivery_fail"
    FORWARD_FAIL = "forward_fail"
    CANCEL = "cancel"
    RETRY = "retry"  # from failed, back to the step that failed


# Statuses an order can be cancelled from, and those late instances send back to unstable.
OPEN = (
    Status.UNSTABLE,
    Status.STABLE,
    Status.QC_PASSED,
    Status.UPLOADING,
    Status.PENDING,
    Status.PROCESSING,
)
BEFORE_PROCESSING = (Status.STABLE, Status.QC_PASSED, Status.UPLOADING, Status.PENDING)
TERMINAL = (Status.DELIVERED, Status.FAILED)


@dataclass(frozen=True)
class Move:
    action: Action
    source: Status | None  # None: the order is being created
    target: Status
    reason: Reason | None = None  # the reason the target ``failed`` carries
    from_reason: Reason | None = None  # for a move out of ``failed``: the reason it failed for


def _retries() -> list[Move]:
    # Retry goes back to the step that failed: QC is run again, an analysis is queued again, the
    # deliveries are run again (from processing); a cancelled or duplicate order starts over at QC.
    back = {
        Reason.QC: Status.STABLE,
        Reason.ANALYSIS: Status.PENDING,
        Reason.DELIVERY: Status.PROCESSING,
        Reason.CANCELLED: Status.STABLE,
        Reason.DUPLICATE: Status.STABLE,
    }
    return [Move(Action.RETRY, Status.FAILED, target, from_reason=r) for r, target in back.items()]


MOVES: tuple[Move, ...] = (
    Move(Action.CREATE, None, Status.STABLE),
    Move(Action.CREATE, None, Status.FAILED, Reason.DUPLICATE),
    Move(Action.CREATE, None, Status.FAILED, Reason.QC),  # the force-complete policy "fail"
    *[Move(Action.REGRESS, s, Status.UNSTABLE) for s in BEFORE_PROCESSING],
    Move(Action.SETTLE, Status.UNSTABLE, Status.STABLE),
    Move(Action.QC_PASS, Status.STABLE, Status.QC_PASSED),
    Move(Action.QC_FAIL, Status.STABLE, Status.FAILED, Reason.QC),
    Move(Action.QC_OVERRIDE, Status.FAILED, Status.QC_PASSED, from_reason=Reason.QC),
    Move(Action.FORWARD, Status.QC_PASSED, Status.UPLOADING),
    Move(Action.FORWARD_FAIL, Status.UPLOADING, Status.FAILED, Reason.DELIVERY),
    Move(Action.QUEUE, Status.QC_PASSED, Status.PENDING),
    Move(Action.QUEUE, Status.UPLOADING, Status.PENDING),
    Move(Action.CLAIM, Status.PENDING, Status.PROCESSING),
    Move(Action.RELEASE, Status.PROCESSING, Status.PENDING),
    Move(Action.ANALYSIS_FAIL, Status.PROCESSING, Status.FAILED, Reason.ANALYSIS),
    Move(Action.DELIVER, Status.PROCESSING, Status.DELIVERED),
    Move(Action.DELIVERY_FAIL, Status.PROCESSING, Status.FAILED, Reason.DELIVERY),
    *[Move(Action.CANCEL, s, Status.FAILED, Reason.CANCELLED) for s in OPEN],
    *_retries(),
)


class Refused(Exception):
    """The move is not in the table: the API answers 409 with this message."""


def move(action: Action, source: Status | None, from_reason: Reason | None = None) -> Move:
    """The one move ``action`` makes from ``source`` (for ``failed``, from ``from_reason``)."""
    reason = from_reason if source == Status.FAILED else None
    for m in MOVES:
        if m.action == action and m.source == source and m.from_reason == reason:
            return m
    shown = f"{source} ({from_reason})" if reason else str(source)
    raise Refused(f"An order that is {shown} cannot {action.value.replace('_', ' ')}")


def study_status(receiving: bool, arrival_state: str | None, order_status: str | None) -> Status:
    """A study's own status: receiving or unstable from its arrival row, then its order's."""
    if receiving:
        return Status.RECEIVING
    if arrival_state in ("unstable", "held"):  # held: past the force-complete limit, for review
        return Status.UNSTABLE
    return Status(order_status) if order_status else Status.STABLE
