"""The event kinds, their payloads, and ``append`` / ``read`` / ``feed`` over the outbox table.

An event row is written on the connection whose transaction makes the change (an instance
row and its ``instance.stored`` row commit together, as Microsoft's change feed does in
``UpdateInstanceStatus``; an order's status and its ``order.status_changed`` row likewise), so
no reader ever sees an event for a change that rolled back, and no change commits without its
event.  In-process readers (the statistics keeper) follow ids; the tenants' change feed
(``GET /api/v1/events``) follows ``feed`` cursors, which a late commit can never slip behind.
Nothing here keeps state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from dicomweb_server.db import events as sql
from dicomweb_server.db.events import Cursor as Cursor  # (xid, id): re-exported for the feed
from dicomweb_server.db.pool import Connection, Pool

INSTANCE_STORED = "instance.stored"  # an instance is in the store and the index (PS3.4 C-STORE success)
STUDY_RECEIVED = "study.received"  # the first instance of a study arrived
STUDY_UPDATED = "study.updated"  # more instances of a known study arrived (``late``: after processing began)
STUDY_STABLE = "study.stable"  # quiet period passed, committed, or force-completed
STUDY_HELD = "study.held"  # past the force-complete limit, held for review (tenant policy "hold")
ORDER_CREATED = "order.created"
ORDER_STATUS_CHANGED = "order.status_changed"
QC_COMPLETED = "qc.completed"
REPORT_READY = "report.ready"
KINDS = (
    INSTANCE_STORED,
    STUDY_RECEIVED,
    STUDY_UPDATED,
    STUDY_STABLE,
    STUDY_HELD,
    ORDER_CREATED,
    ORDER_STATUS_CHANGED,
    QC_COMPLETED,
    REPORT_READY,
)


class NewEvent(Protocol):
    """What ``append`` writes: a tenant's event of one kind about one subject."""

    @property
    def tenant(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    def payload(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class InstanceStored:
    """``instance.stored``: the instance's tenant, its study/series/SOP Instance UIDs (PS3.3
    (0020,000D), (0020,000E), (0008,0018)) and the object key its bytes are stored under."""

    tenant: str
    study: str
    series: str
    instance: str
    key: str

    kind = INSTANCE_STORED

    @property
    def subject(self) -> str:
        return self.study

    def payload(self) -> dict[str, str]:
        return {"study": self.study, "series": self.series, "instance": self.instance, "key": self.key}


@dataclass(frozen=True)
class Change:
    """Any other event: its kind, subject (a Study Instance UID or an order id) and data."""

    tenant: str
    kind: str
    subject: str
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return self.data


@dataclass(frozen=True)
class Event:
    """One row read back: its id (the readers' cursor), tenant, kind and payload."""

    id: int
    tenant: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    subject: str | None = None
    cursor: Cursor | None = None  # set by ``feed``: where a reader resumes after this event

    def instance_stored(self) -> InstanceStored:
        """The payload as the value it was appended from (for ``instance.stored`` rows)."""
        if self.kind != INSTANCE_STORED:
            raise ValueError(f"event {self.id} is {self.kind}, not {INSTANCE_STORED}")
        p = self.payload
        return InstanceStored(self.tenant, p["study"], p["series"], p["instance"], p["key"])


async def append(conn: Connection, events: Iterable[NewEvent]) -> None:
    """Append ``events`` on ``conn``, inside the caller's transaction (call it there)."""
    rows = [(e.tenant, e.kind, e.subject, orjson.dumps(e.payload()).decode()) for e in events]
    await sql.append(conn, rows)


async def read(conn: Connection, after: int, limit: int = 1000, kind: str | None = None) -> list[Event]:
    """The events after id ``after``, oldest first, at most ``limit``; only ``kind`` if given."""
    return [
        Event(id, tenant, row_kind, orjson.loads(payload), at, subject)
        for id, tenant, row_kind, subject, payload, at in await sql.read(conn, after, limit, kind)
    ]


async def feed(
    conn: Connection, tenant: str, after: Cursor | None, kinds: tuple[str, ...] | None, limit: int
) -> list[Event]:
    """A tenant's events after ``after`` in commit-safe order (db/events.py ``feed``)."""
    return [
        Event(id, tenant, kind, orjson.loads(payload), at, subject, cursor)
        for cursor, id, kind, subject, payload, at in await sql.feed(conn, tenant, after, kinds, limit)
    ]


async def pruned(conn: Connection) -> Cursor | None:
    """The newest feed cursor retention has removed (None: nothing removed yet): a reader
    resuming from an older one has missed events, and the feed answers 410 with this one."""
    return await sql.pruned(conn)


async def prune(conn: Connection, older_than_seconds: float, batch: int) -> int:
    """Delete up to ``batch`` events older than ``older_than_seconds`` in a transaction of its
    own, remembering the newest cursor deleted; how many went (fewer than ``batch``: done)."""
    return await sql.prune(conn, older_than_seconds, batch)


class Waker:
    """Wakes the long-polling readers of this process when events commit (LISTEN on one pooled
    connection; db/events.py notifies in each appending transaction).  An async context manager
    built by the lifespan.  ``wait(seconds, seen)`` returns once an append committed after the
    reader's ``seen`` generation, or after ``seconds``: a wake-up between a reader's look and its
    wait is never lost.  Without a listening connection it only times out (the reader polls)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.generation = 0
        self.listening = False
        self._changed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Waker:
        self.listening = await self._stack.enter_async_context(sql.listening(self.pool, self._woken))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.listening = False
        await self._stack.aclose()

    def _woken(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seconds: float, seen: int) -> None:
        if self.generation != seen:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()


async def latest(conn: Connection) -> int:
    """The newest event id (0 for none): a reader that starts now reads after it."""
    return await sql.latest(conn)
