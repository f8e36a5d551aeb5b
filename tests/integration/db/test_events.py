"""The event outbox (db/events.py, events/): rows commit with the writer's transaction, or not at all."""

from __future__ import annotations

import asyncpg
import pytest

from dicomweb_server import events
from dicomweb_server.events import INSTANCE_STORED, InstanceStored


def stored(n: int, tenant: str = "default") -> InstanceStored:
    return InstanceStored(tenant, "1.2.3", "1.2.3.4", f"1.2.3.4.{n}", f"objects/{n}")


class Rollback(Exception):
    pass


async def test_an_event_appended_in_a_transaction_that_rolls_back_leaves_no_row(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        before = await events.latest(conn)
        with pytest.raises(Rollback):
            async with conn.transaction():
                await events.append(conn, [stored(1), stored(2)])
                assert len(await events.read(conn, before)) == 2  # visible inside the transaction
                raise Rollback
        assert await events.read(conn, before) == []
    async with db.acquire() as other:
        assert await events.read(other, before) == []


async def test_events_are_read_after_an_id_oldest_first_as_appended(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        start = await events.latest(conn)
        async with conn.transaction():
            await events.append(conn, [stored(n, tenant="other" if n == 2 else "default") for n in range(3)])
        rows = await events.read(conn, start)
        assert [e.instance_stored() for e in rows] == [stored(0), stored(1), stored(2, tenant="other")]
        assert all(e.kind == INSTANCE_STORED for e in rows)
        assert rows[0].payload == {
            "study": "1.2.3",
            "series": "1.2.3.4",
            "instance": "1.2.3.4.0",
            "key": "objects/0",
        }
        ids = [e.id for e in rows]
        assert ids == sorted(ids) and ids[0] > start
        assert await events.latest(conn) == ids[-1]
        # After the first: the other two; a limit stops early; none after the newest.
        assert [e.id for e in await events.read(conn, ids[0])] == ids[1:]
        assert [e.id for e in await events.read(conn, start, limit=1)] == ids[:1]
        assert await events.read(conn, ids[-1]) == []
        assert await events.read(conn, start, kind="study.completed") == []
