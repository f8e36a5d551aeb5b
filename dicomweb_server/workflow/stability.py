"""When a study is complete enough to act on: the settle step (quiet period, force-complete
limit), the explicit commit, and the routing decision that follows (WORKFLOW.md, "Knowing
that a study is complete").

Everything a study's stability depends on is its arrival row (db/arrival.py), locked for the
step's transaction; the step that makes it stable writes the row, the ``study.stable`` event,
the order it routes to (or the regressed orders it releases) and their QC steps in that one
transaction.  A step that finds its row not yet due asks the queue to run it again at the due
time (``Later``): a restart in the middle of a quiet period changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomweb_server import events
from dicomweb_server.db import arrival, orders
from dicomweb_server.db.pool import Connection, Pool, transaction
from dicomweb_server.events import Change, NewEvent
from dicomweb_server.jobs.queue import Later, enqueue
from dicomweb_server.lifecycle import Action, Reason, Status
from dicomweb_server.settings import WorkflowSettings

QC_STEP = "order.qc"
RECEIVING_RECHECK = 2.0  # seconds between looks at a study whose request or association is open


def order_moved(m: orders.Moved, actor: str) -> Change:
    """The ``order.status_changed`` event of one move."""
    data = {"order_id": m.order_id, "from": m.source, "to": m.target, "reason": m.reason, "actor": actor}
    return Change(m.tenant, events.ORDER_STATUS_CHANGED, m.order_id, data)


async def queue_qc(conn: Connection, tenant: str, order_id: str) -> None:
    await enqueue(conn, QC_STEP, {"tenant": tenant, "order": order_id}, key=f"{QC_STEP}:{order_id}")


async def settle(pool: Pool, workflow: WorkflowSettings, payload: dict[str, Any]) -> None:
    """The queued settle step of one study: stable once quiet (or forced), else again later."""
    tenant, study = payload["tenant"], payload["study"]
    async with transaction(pool) as conn:
        due = await arrival.lock(conn, tenant, study, workflow)
        if due is None or due.state != "unstable" or due.instances == 0:
            return  # gone, already stable or held, another step holds it, or nothing stored yet
        if due.receiving:
            raise Later(RECEIVING_RECHECK)
        if due.due_in is not None and due.due_in > 0:
            raise Later(due.due_in)
        by = "force" if due.forced else "quiet"
        policy = due.force_policy if by == "force" else "proceed"
        await become_stable(conn, tenant, study, by, policy, due.auto_orders, due.digest)


@dataclass(frozen=True)
class Committed:
    """A commit's answer: the study's status now, or what is missing (409)."""

    stable: bool
    missing: dict[str, int] | None = None
    found: bool = True


async def commit(
    pool: Pool,
    workflow: WorkflowSettings,
    tenant: str,
    study: str,
    expected_instances: int | None,
    expected_series: int | None,
    actor: str,
) -> Committed:
    """``POST /api/v1/studies/{study}/commit``: stable at once when the expected counts are met
    (or none are given); otherwise nothing changes and the answer says what is missing."""
    async with transaction(pool) as conn:
        row = await arrival.counts(conn, tenant, study, lock=True)
        if row is None or (row["indexed"] == 0 and row["instances"] == 0):
            return Committed(False, found=False)
        missing = {}
        if expected_instances is not None and row["indexed"] < expected_instances:
            missing["instances"] = expected_instances - row["indexed"]
        if expected_series is not None and row["series"] < expected_series:
            missing["series"] = expected_series - row["series"]
        if missing:
            return Committed(False, missing)
        await arrival.expect(conn, tenant, study, expected_instances, expected_series)
        if row["state"] in ("unstable", "held"):
            settings = await arrival.tenant_settings(conn, tenant, workflow)
            await become_stable(
                conn, tenant, study, "commit", "proceed", settings["auto_orders"], row["digest"], actor
            )
        return Committed(True)


async def become_stable(
    conn: Connection,
    tenant: str,
    study: str,
    by: str,
    policy: str,
    auto_orders: bool,
    digest: str,
    actor: str = "lifecycle",
) -> None:
    """unstable → stable (or held, by the force-complete policy), its event, then routing."""
    held = policy == "hold"
    if not await arrival.make_stable(conn, tenant, study, by, held=held):
        return
    out: list[NewEvent] = []
    if held:
        out.append(Change(tenant, events.STUDY_HELD, study, {"by": by}))
        await events.append(conn, out)
        return
    out.append(Change(tenant, events.STUDY_STABLE, study, {"by": by}))
    out += await route(conn, tenant, study, auto_orders, digest, failed=policy == "fail", actor=actor)
    await events.append(conn, out)


async def route(
    conn: Connection, tenant: str, study: str, auto_orders: bool, digest: str, *, failed: bool, actor: str
) -> list[NewEvent]:
    """The routing decision for a study that just became stable (QC/routing rules replace the
    default later): orders it had that late instances sent back to unstable go on; else, with
    automatic orders on and no automatic order yet, it becomes one order: a duplicate (by
    digest) of one already processing or delivered is recorded as such and not analysed again."""
    out: list[NewEvent] = []
    waiting = await orders.waiting_for(conn, tenant, study)
    for order_id in waiting:
        m = await orders.transition(conn, tenant, order_id, Action.SETTLE, actor, expect=Status.UNSTABLE)
        if m is not None:
            out.append(order_moved(m, actor))
            await queue_qc(conn, tenant, order_id)
    if waiting or not auto_orders or await orders.has_auto_order(conn, tenant, study):
        return out
    first = await orders.duplicate_of(conn, tenant, digest)
    if first is not None:
        status, reason = Status.FAILED, Reason.DUPLICATE
    elif failed:
        status, reason = Status.FAILED, Reason.QC
    else:
        status, reason = Status.STABLE, None
    created = await orders.create(
        conn,
        tenant,
        [study],
        source="auto",
        actor=actor,
        status=status,
        reason=reason,
        duplicate_of=first,
        digest=digest,
    )
    data = {"order_id": created.order_id, "status": status, "studies": [study], "duplicate_of": first}
    out.append(Change(tenant, events.ORDER_CREATED, created.order_id, data))
    if status == Status.STABLE:
        await queue_qc(conn, tenant, created.order_id)
    return out
