"""``GET /api/v1/events``: a tenant's change feed as CloudEvents 1.0, with long polling and
retention (the Orders issue, §5).

The feed reads the outbox (events/outbox.py) in the commit-safe (xid, id) order of
db/events.py, so a reader that resumes from the cursor of the last event it handled never
misses one, whatever order concurrent transactions commit in.  The cursor is opaque
(workflow/api.py ``encode_cursor``); ``next_cursor`` is never null: with no new events it is
the position the reader asked from, so a reader always has somewhere to resume.

Retention (workflow/jobs.py ``events.prune``) deletes old events and remembers the newest
cursor it removed.  A reader resuming from an older cursor has missed events it can never get
back: it gets a 410 problem (RFC 9457 §3.2 extension member ``oldest_cursor``) rather than a
page that silently skips them, and resuming from ``oldest_cursor`` loses nothing still kept.

Each item is a CloudEvent in its JSON format (CloudEvents 1.0 spec, §3 context attributes;
JSON Event Format §3): ``source`` is a URI-reference naming the producing tenant.  The object
key of ``instance.stored`` is an internal storage detail and is not shown.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomweb_server import events
from dicomweb_server.db.pool import Pool, connection
from dicomweb_server.errors import BadRequest, Gone
from dicomweb_server.events import Cursor, Event
from dicomweb_server.workflow.api import API, decode_cursor, encode_cursor, limit_of, page, query, rfc3339

MAX_WAIT = 30.0  # seconds a long poll may be asked to wait
POLL_EVERY = 0.1  # seconds between looks at the outbox while a long poll waits, without a waker
WOKEN_EVERY = 0.25  # with one (appends wake it): still look this often, for a row held back by an
# older transaction still open when its own commit woke the reader (db/events.py ``feed``)
HIDDEN = {events.INSTANCE_STORED: ("key",)}  # payload members that are internal details
_NUMBER = re.compile(r"\d+(\.\d+)?")


@dataclass(frozen=True)
class Page:
    """One answer of the feed: the events and where the reader resumes."""

    events: list[Event]
    next_cursor: Cursor


def cursor_of(raw: str | None) -> Cursor | None:
    """The ``after`` cursor (None when absent); 400 for one this server did not hand out."""
    values = decode_cursor(raw, 2)
    if values is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values):
        raise BadRequest("cursor is not one this server handed out")
    return (values[0], values[1])


def types_of(raw: str | None) -> tuple[str, ...] | None:
    """The ``types`` filter: comma-separated event kinds, each one the feed knows (400 otherwise)."""
    if raw is None:
        return None
    names = tuple(name.strip() for name in raw.split(","))
    if not all(names):
        raise BadRequest("types must list event types separated by commas, with none empty")
    unknown = [name for name in names if name not in events.KINDS]
    if unknown:
        raise BadRequest(
            f"Unknown event type(s): {', '.join(unknown)}; known: {', '.join(events.KINDS)}",
            fields={"unknown_types": unknown},
        )
    return tuple(dict.fromkeys(names))


def wait_of(raw: str | None) -> float:
    """The long poll's ``wait``: seconds from 0 to 30 (default 0, answer at once)."""
    if raw is None:
        return 0.0
    if not _NUMBER.fullmatch(raw) or not 0 <= float(raw) <= MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return float(raw)


async def read(
    pool: Pool,
    tenant: str,
    after: Cursor | None,
    kinds: tuple[str, ...] | None,
    limit: int,
    wait: float,
    gone: Callable[[], Awaitable[bool]] | None = None,
    waker: events.Waker | None = None,
) -> Page | None:
    """The tenant's events after ``after``: at once if there are any, else as soon as one is
    there, else an empty page after ``wait`` seconds.  410 (``Gone``) when ``after`` is older
    than what retention has removed, checked on each look so a prune during the wait is seen.

    The long poll looks again as soon as a transaction that appended events commits (``waker``,
    LISTEN/NOTIFY), at least every ``WOKEN_EVERY`` seconds (or every ``POLL_EVERY`` seconds with
    no waker), on a connection taken for that look only, so waiting readers hold no pooled
    connection between looks.  ``gone`` is asked between looks: a reader that went away ends
    the poll (None) instead of leaving it to query the outbox for the rest of its wait, unseen
    (a client retrying with a short timeout would otherwise pile such orphans up).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        seen = waker.generation if waker is not None else 0
        async with connection(pool) as conn:
            removed = await events.pruned(conn)
            if after is not None and removed is not None and after < removed:
                raise Gone(
                    "Events after this cursor have been removed by retention; "
                    "resume from oldest_cursor (nothing still kept is lost)",
                    fields={"oldest_cursor": encode_cursor(*removed)},
                )
            found = await events.feed(conn, tenant, after, kinds, limit)
        left = deadline - loop.time()
        if found or left <= 0:
            break
        if gone is not None and await gone():
            return None
        if waker is not None and waker.listening:
            await waker.wait(min(WOKEN_EVERY, left), seen)
        else:
            await asyncio.sleep(min(POLL_EVERY, left))
    if found:
        last = found[-1].cursor
        assert last is not None  # feed always sets it
        return Page(found, last)
    # No events: resume where asked; from the start, that is past what retention removed.
    return Page([], after if after is not None else (removed or (0, 0)))


def cloud_event(event: Event, tenant: str) -> dict[str, Any]:
    """One event as a CloudEvent 1.0 in its JSON format (required attributes, then the optional
    ``time``, ``subject`` and ``datacontenttype``; ``data`` is the payload)."""
    hidden = HIDDEN.get(event.kind, ())
    item: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event.id),
        "source": f"{API}/tenants/{tenant}",
        "type": event.kind,
        "time": rfc3339(event.created_at),
    }
    if event.subject is not None:
        item["subject"] = event.subject
    item["datacontenttype"] = "application/json"
    item["data"] = {k: v for k, v in event.payload.items() if k not in hidden}
    return item


async def list_events(request: Request) -> Response:
    """``GET /api/v1/events?after=&types=&limit=&wait=``: the caller's tenant's change feed."""
    params = query(request, {"after", "types", "limit", "wait"})
    tenant = request.state.tenant
    found = await read(
        request.app.state.pool,
        tenant,
        cursor_of(params.get("after")),
        types_of(params.get("types")),
        limit_of(request),
        wait_of(params.get("wait")),
        request.is_disconnected,
        request.app.state.feed_waker,
    )
    if found is None:
        raise ClientDisconnect  # nobody to answer: logged as closed by the client, not as a 200
    return page([cloud_event(e, tenant) for e in found.events], encode_cursor(*found.next_cursor))
