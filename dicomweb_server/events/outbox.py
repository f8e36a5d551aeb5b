"""The event kinds, their payloads, and ``append`` / ``read`` over the outbox table.

An event row is written on the connection whose transaction makes the change (an instance
row and its ``instance.stored`` row commit together, as Microsoft's change feed does in
``UpdateInstanceStatus``), so no reader ever sees an event for a change that rolled back, and
no change commits without its event.  Readers keep a cursor (the last id they handled): the
statistics keeper now, webhooks and the study lifecycle later.  Nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from dicomweb_server.db import events as sql
from dicomweb_server.db.pool import Connection

INSTANCE_STORED = "instance.stored"  # an instance is in the store and the index (PS3.4 C-STORE success)


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

    def payload(self) -> dict[str, str]:
        return {"study": self.study, "series": self.series, "instance": self.instance, "key": self.key}


@dataclass(frozen=True)
class Event:
    """One row read back: its id (the readers' cursor), tenant, kind and payload."""

    id: int
    tenant: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime

    def instance_stored(self) -> InstanceStored:
        """The payload as the value it was appended from (for ``instance.stored`` rows)."""
        if self.kind != INSTANCE_STORED:
            raise ValueError(f"event {self.id} is {self.kind}, not {INSTANCE_STORED}")
        p = self.payload
        return InstanceStored(self.tenant, p["study"], p["series"], p["instance"], p["key"])


async def append(conn: Connection, events: Iterable[InstanceStored]) -> None:
    """Append ``events`` on ``conn``, inside the caller's transaction (call it there)."""
    rows = [(e.tenant, e.kind, orjson.dumps(e.payload()).decode()) for e in events]
    await sql.append(conn, rows)


async def read(conn: Connection, after: int, limit: int = 1000, kind: str | None = None) -> list[Event]:
    """The events after id ``after``, oldest first, at most ``limit``; only ``kind`` if given."""
    return [
        Event(id, tenant, row_kind, orjson.loads(payload), at)
        for id, tenant, row_kind, payload, at in await sql.read(conn, after, limit, kind)
    ]


async def latest(conn: Connection) -> int:
    """The newest event id (0 for none): a reader that starts now reads after it."""
    return await sql.latest(conn)
