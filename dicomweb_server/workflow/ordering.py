"""The orders API's service: creating an order over stored, stable studies (idempotently), and
the operator's moves (cancel, retry, QC override), each one transaction.

Every move is ``db.orders.transition`` (a compare-and-set with its history row), its
``order.status_changed`` event and the step the new status needs, committed together
(DESIGN.md, "State machines are tables").  A group order (several studies) is one order: it
gets one aggregated report.

``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header): the key is stored on the
order with the SHA-256 of the request's canonical JSON; the same key with the same request
answers the same order, with another request it is a 422.  Two requests racing on one key
meet at the unique constraint ``orders_idempotency``: the loser re-reads the winner's order.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from dicomweb_server import events
from dicomweb_server.db import order_views
from dicomweb_server.db import orders as orders_db
from dicomweb_server.db.pool import Connection, Pool, transaction
from dicomweb_server.errors import Conflict, NotFound, Unprocessable
from dicomweb_server.events import Change, NewEvent
from dicomweb_server.jobs.queue import enqueue
from dicomweb_server.lifecycle import Action, Refused, Status, study_status
from dicomweb_server.workflow import delivery, stability


@dataclass(frozen=True)
class NewOrder:
    """A checked ``POST /api/v1/orders`` body (defaults applied)."""

    studies: tuple[str, ...]
    priority: str = "routine"
    external_id: str | None = None
    note: str | None = None

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON (sorted keys, defaults filled in): a replay with
        ``"priority": "routine"`` spelled out is the same request as one without it."""
        return hashlib.sha256(orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)).digest()


async def _replay(conn: Connection, tenant: str, key: str, digest: bytes) -> str | None:
    found = await orders_db.by_key(conn, tenant, key)
    if found is None:
        return None
    order_id, stored = found
    if stored != digest:
        raise Unprocessable(
            "This Idempotency-Key was used with another request body", fields={"order_id": order_id}
        )
    return order_id


async def _check_studies(conn: Connection, tenant: str, studies: tuple[str, ...]) -> None:
    """404 naming the studies not stored in the tenant; 409 naming those not stable yet."""
    states = await order_views.study_states(conn, tenant, studies)
    missing = [s for s in studies if s not in states]
    if missing:
        raise NotFound(f"No instances stored of: {', '.join(missing)}", fields={"missing": missing})
    unstable = [
        s
        for s in studies
        if study_status(states[s]["receiving"], states[s]["state"], None)
        in (Status.RECEIVING, Status.UNSTABLE)
    ]
    if unstable:
        raise Conflict(
            f"Not stable yet (still arriving, or held for review): {', '.join(unstable)}; "
            "wait for the quiet period or commit the study",
            fields={"unstable": unstable},
        )


async def create(pool: Pool, tenant: str, new: NewOrder, key: str | None, actor: str) -> tuple[str, bool]:
    """(order id, created now) for ``POST /api/v1/orders``: the order, its ``order.created``
    event and its QC step in one transaction."""
    digest = new.digest()
    async with transaction(pool) as conn:
        if key is not None and (earlier := await _replay(conn, tenant, key, digest)) is not None:
            return earlier, False
        await _check_studies(conn, tenant, new.studies)
        created = await orders_db.create_keyed(
            conn,
            tenant,
            new.studies,
            source="api",
            actor=actor,
            priority=new.priority,
            external_id=new.external_id,
            note=new.note,
            idempotency_key=key,
            request_hash=digest if key is not None else None,
        )
        if created is None:  # a concurrent request with this key committed first
            assert key is not None
            raced = await _replay(conn, tenant, key, digest)
            assert raced is not None
            return raced, False
        data = {
            "order_id": created.order_id,
            "status": created.target,
            "studies": list(new.studies),
            "duplicate_of": None,
            "source": "api",
        }
        await events.append(conn, [Change(tenant, events.ORDER_CREATED, created.order_id, data)])
        await stability.queue_qc(conn, tenant, created.order_id)
        return created.order_id, True


async def act(
    pool: Pool, tenant: str, order_id: str, action: Action, actor: str, detail: str | None = None
) -> None:
    """An operator's move (cancel, retry, QC override) with its events and next step; 404 for no
    such order in the tenant, 409 (the lifecycle's message) for a move the table refuses."""
    async with transaction(pool) as conn:
        try:
            moved = await orders_db.transition(conn, tenant, order_id, action, actor, detail)
        except Refused as exc:
            raise Conflict(str(exc)) from None
        if moved is None:
            raise NotFound(f"No order {order_id}")
        out: list[NewEvent] = [stability.order_moved(moved, actor)]
        if action == Action.CANCEL:
            await orders_db.withdraw_jobs(conn, order_id)
        elif action == Action.QC_OVERRIDE:
            # No forward destination exists yet (the DICOM networking issue adds them): queue.
            queued = await orders_db.transition(conn, tenant, order_id, Action.QUEUE, actor)
            assert queued is not None
            out.append(stability.order_moved(queued, actor))
        elif action == Action.RETRY:
            await _next_step(conn, tenant, order_id, moved.target)
        await events.append(conn, out)


async def _next_step(conn: Connection, tenant: str, order_id: str, target: Status) -> None:
    """What a retried order needs: QC again, nothing (workers claim pending orders), or its
    newest report's deliveries again."""
    if target == Status.STABLE:
        await stability.queue_qc(conn, tenant, order_id)
    elif target == Status.PROCESSING:
        report = await orders_db.newest_report(conn, order_id)
        if report is not None:
            payload = {"tenant": tenant, "report": report}
            await enqueue(conn, delivery.DELIVER_STEP, payload, key=delivery.deliver_key(report))


def qc_of(stored: str | None) -> Any:
    """The QC result kept on the order (workflow/qc.py), or None before QC ran."""
    return None if stored is None else orjson.loads(stored)
