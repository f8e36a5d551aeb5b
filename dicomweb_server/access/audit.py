"""The audit trail: one row per protected request and token request (PS3.15 A.5 event types).

Rows are queued by the request and appended in batches by one background job (``job()``, run
by jobs.runner), off the request path.  The trail must survive any input:

- Every value is made safe before it reaches a row.  What the server itself chose (the event,
  the status, the tenant of a verified token) goes in as is; what a client typed (a path UID, a
  client id at the token endpoint) goes in only if it has the shape it should (a UID of digits
  and dots, at most 64 characters; a client id of the client table's alphabet), else as
  ``invalid:`` and a 64-bit BLAKE2b digest: the same input gives the same digest, so repeats can
  be correlated, and nothing typed (a NUL, a name, a pasted secret) is stored.
- A batch that fails is retried row by row; a row that still fails is written in a reduced
  form (only the server's own values) and logged without its values.  No row blocks another.
- While the database is unreachable, rows wait in a bounded queue (``MAX_QUEUED``); when it
  is full, new rows are dropped and counted (``dropped``, logged at ERROR at most every 10 s).
- Shutdown flushes what is queued and logs at ERROR how many rows it could not write.

``written``, ``reduced`` and ``dropped`` are counters for the metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb_server import metrics
from dicomweb_server.access import auth
from dicomweb_server.db import access as access_db
from dicomweb_server.db.pool import Pool, connection
from dicomweb_server.errors import DicomWebError
from dicomweb_server.jobs.runner import Job
from dicomweb_server.web.context import REQUEST_ID

log = logging.getLogger(__name__)

# PS3.15 A.5.3 audit events per transaction: (EventID code, meaning, EventActionCode).
EVENTS = {
    "store": (110104, "DICOM Instances Transferred", "C"),
    "search-studies": (110112, "Query", "E"),
    "search-series": (110112, "Query", "E"),
    "search-instances": (110112, "Query", "E"),
    "retrieve": (110103, "DICOM Instances Accessed", "R"),
    "metadata": (110103, "DICOM Instances Accessed", "R"),
    "frames": (110103, "DICOM Instances Accessed", "R"),
    "bulkdata": (110103, "DICOM Instances Accessed", "R"),
    "rendered": (110103, "DICOM Instances Accessed", "R"),
    "thumbnail": (110103, "DICOM Instances Accessed", "R"),
    "delete": (110103, "DICOM Instances Accessed", "D"),
    "token": (110114, "User Authentication", "E"),
    "audit": (110101, "Audit Log Used", "R"),
}
SECURITY_ALERT = (110113, "Security Alert", "E")
OUTCOMES = (0, 4, 8, 12)  # PS3.15 A.5.1 EventOutcomeIndicator: success, minor, serious, major failure

MAX_QUEUED = 100_000  # rows waiting while the database is unreachable (~20 MB)
BATCH = 1000  # rows per COPY
DROP_LOG_SECONDS = 10.0
CLOSE_SECONDS = 10.0  # shutdown waits this long for the database
GATHER_SECONDS = 0.05  # after the first queued row, wait this long to gather a batch
RETRY_SECONDS = 1.0  # while the database cannot be written, try again this often

Row = tuple[Any, ...]  # in db.access.AUDIT_COLUMNS order

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
# Printable ASCII: our client ids, "unknown:<digest>", and what an external issuer's verified token names.
_CLIENT_ID = re.compile(r"[!-~]{1,128}")
_WORD = re.compile(r"[a-z-]{1,32}")
_PARAMETER = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def digest(value: str) -> str:
    """A short, stable stand-in for a value that must not be stored as it is."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def safe(value: object, pattern: re.Pattern[str], max_length: int = 80) -> str | None:
    """``value`` if it is a string of the expected shape, else ``invalid:<digest>`` (None stays None)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= max_length and pattern.fullmatch(text):
        return text
    return "invalid:" + digest(text)


def safe_uid(value: object) -> str | None:
    return safe(value, _UID, 64)


def event_of(transaction: str, status: int, tenant: str | None) -> tuple[int, str, str]:
    """The PS3.15 event: a token request is User Authentication when it named a known client (a
    tenant), else a Security Alert; elsewhere a refused authentication or scope is a Security Alert."""
    if transaction == "token":
        return EVENTS["token"] if tenant else SECURITY_ALERT
    if status in (401, 403, 429):
        return SECURITY_ALERT
    return EVENTS.get(transaction, SECURITY_ALERT)


def reduced(row: Row) -> Row:
    """The row with only the server's own values: what is written when the whole row cannot be."""
    at, tenant, _, event_id, event, action, transaction, _, status, outcome, request_id = row
    return (
        at if isinstance(at, datetime) else datetime.now(UTC),
        tenant if isinstance(tenant, str) and auth.TENANT_ID.fullmatch(tenant) else None,
        None,
        event_id if isinstance(event_id, int) else SECURITY_ALERT[0],
        event if event in {e[1] for e in EVENTS.values()} | {SECURITY_ALERT[1]} else SECURITY_ALERT[1],
        action if action in ("C", "R", "U", "D", "E") else "E",
        transaction if transaction in EVENTS else "unknown",
        None,
        status if isinstance(status, int) else 0,
        outcome if outcome in OUTCOMES else 12,
        request_id if isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id) else "invalid",
    )


class AuditTrail:
    """Audit rows are queued by the request and appended in batches by one background task."""

    def __init__(self, pool: Pool, max_queued: int = MAX_QUEUED):
        self.pool = pool
        self.max_queued = max_queued
        self.queue: deque[Row] = deque()
        self.wake = asyncio.Event()
        self.written = 0  # rows appended (reduced ones included)
        self.reduced = 0  # rows appended in the reduced form
        self.dropped = 0  # rows never written: the queue was full, or shutdown could not write them
        self._unlogged_drops = 0
        self._drop_logged = 0.0
        self._failing_since = 0.0  # while the database cannot be written: when that began
        self._failure_logged = 0.0

    @property
    def queued(self) -> int:
        return len(self.queue)

    def record(self, state: dict[str, Any], status: int, request_id: str, study_uid: str | None) -> None:
        transaction = state.get("transaction")
        if transaction is None:
            return  # an open route (health, discovery, capabilities)
        tenant = safe(state.get("tenant"), auth.TENANT_ID, 63)
        event = event_of(str(transaction), status, tenant)
        outcome = 0 if status < 400 else 4 if status < 500 else 8
        row = (
            datetime.now(UTC),
            tenant,
            safe(state.get("client_id"), _CLIENT_ID, 128),
            event[0],
            event[1],
            event[2],
            safe(transaction, _WORD, 32),
            safe_uid(study_uid),
            status,
            outcome,
            safe(request_id, REQUEST_ID, 64),
        )
        if len(self.queue) >= self.max_queued:
            self._drop(1)
            return
        self.queue.append(row)
        self.wake.set()

    def _wrote(self, rows: int) -> None:
        self.written += rows
        metrics.audit_written(rows)

    def _lost(self, rows: int) -> None:
        self.dropped += rows
        metrics.audit_dropped(rows)

    def _drop(self, rows: int) -> None:
        self._lost(rows)
        self._unlogged_drops += rows
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_SECONDS:
            log.error(
                "audit queue full: rows dropped",
                extra={"event": "audit_dropped", "rows": self._unlogged_drops, "dropped_total": self.dropped},
            )
            self._drop_logged = now
            self._unlogged_drops = 0

    def _requeue(self, rows: list[Row]) -> None:
        """Rows not written go back to the head of the queue, within its bound."""
        self.queue.extendleft(reversed(rows))
        excess = len(self.queue) - self.max_queued
        for _ in range(max(0, excess)):
            self.queue.pop()
        if excess > 0:
            self._drop(excess)

    async def flush(self) -> None:
        """Write everything queued.  Raises only while the database cannot be written at all; the
        rows not written are then back in the queue."""
        while self.queue:
            batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
            try:
                await self._append(batch)
            except Exception:
                await self._row_by_row(batch)
            except BaseException:  # cancelled: written or not, nothing is lost (a repeat at worst)
                self._requeue(batch)
                raise
            else:
                self._wrote(len(batch))

    async def _append(self, rows: list[Row]) -> None:
        async with connection(self.pool) as conn:
            await access_db.append_audit(conn, rows)

    async def _row_by_row(self, batch: list[Row]) -> None:
        for i, row in enumerate(batch):
            try:
                try:
                    await self._append([row])
                    self._wrote(1)
                    continue
                except Exception as exc:
                    error = type(exc).__name__
                await self._append([reduced(row)])
            except BaseException:  # the reduced row failed too: the database, not this row
                self._requeue(batch[i:])
                raise
            self._wrote(1)
            self.reduced += 1
            log.error(  # without the row's values: the request id finds it
                "audit row written in a reduced form",
                extra={"event": "audit_reduced", "request_id": reduced(row)[10], "error": error},
            )

    async def step(self) -> float | None:
        """One run of the writer (jobs.runner, woken by ``wake``): flush; while the database
        cannot be written, log (then, and every minute) and ask to run again in a second, even
        if no request comes."""
        try:
            await self.flush()
        except Exception as exc:
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if now - self._failure_logged >= 60:
                log.error(
                    "audit write failed; rows kept for a retry",
                    extra={"event": "audit_failed", "queued": len(self.queue), "error": type(exc).__name__},
                )
                self._failure_logged = now
            return RETRY_SECONDS
        if self._failing_since:
            log.warning(
                "audit writes resumed",
                extra={"event": "audit_resumed", "seconds": round(time.monotonic() - self._failing_since)},
            )
        self._failing_since = self._failure_logged = 0.0
        return None

    def job(self) -> Job:
        """The writer as the runner runs it: woken by a queued row, gathering a batch first."""
        return Job(self.step, wakeup=self.wake, gather=GATHER_SECONDS)

    async def close(self) -> None:
        """Flush (for up to ``CLOSE_SECONDS``); whatever cannot be written is counted as dropped and
        reported at ERROR."""
        error = None
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.flush()
        except Exception as exc:
            error = type(exc).__name__
        if self.queue:
            lost = list(self.queue)
            self.queue.clear()
            self._lost(len(lost))
            log.error(
                "audit rows could not be written at shutdown",
                extra={
                    "event": "audit_lost",
                    "rows": len(lost),
                    "error": error,
                    "request_ids": [row[10] for row in lost[:20]],
                },
            )


# -- GET /admin/audit ---------------------------------------------------------------------------

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PK_MAX = 2**63 - 1
_EVENT_IDS = {e[0] for e in EVENTS.values()} | {SECURITY_ALERT[0]}
PARAMETERS = ("limit", "cursor", "after", "since", "until", "client_id", "event", "transaction", "outcome")


class BadParameter(DicomWebError):
    status = 400


def _int(name: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or not low <= int(value) <= high:
        raise BadParameter(f"{name} must be an integer from {low} to {high}")
    return int(value)


def _time(name: str, value: str) -> datetime:
    try:
        if not value.isascii():
            raise ValueError
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadParameter(f"{name} must be an ISO 8601 date-time, e.g. 2026-12-03T10:00:00Z") from None


def cursor_of(pk: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{pk}".encode()).decode().rstrip("=")


def _cursor(value: str) -> int:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        kind, _, number = text.partition(":")
        if kind != "audit":
            raise ValueError
        return _int("cursor", number, 1, _PK_MAX)
    except (ValueError, BadParameter):
        raise BadParameter("cursor is not one this server gave (follow the Link rel=next)") from None


def audit_filters(pairs: list[tuple[str, str]]) -> tuple[dict[str, Any], int]:
    """The query's filters for db.access.read_audit, and the limit; anything unknown, repeated, empty or
    out of range is a 400."""
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise BadParameter(
                f"unknown parameter {safe(name, _PARAMETER, 32)}; known: {', '.join(PARAMETERS)}"
            )
        if name in seen:
            raise BadParameter(f"{name} is given more than once")
        if value == "":
            raise BadParameter(f"{name} is empty")
        seen[name] = value
    limit = _int("limit", seen["limit"], 1, MAX_LIMIT) if "limit" in seen else DEFAULT_LIMIT
    filters: dict[str, Any] = {}
    if "cursor" in seen:
        filters["before"] = _cursor(seen["cursor"])
    if "after" in seen:
        filters["after"] = _int("after", seen["after"], 0, _PK_MAX)
    for name in ("since", "until"):
        if name in seen:
            filters[name] = _time(name, seen[name])
    if "since" in filters and "until" in filters and filters["since"] >= filters["until"]:
        raise BadParameter("since must be earlier than until")
    if "client_id" in seen:
        if not _CLIENT_ID.fullmatch(seen["client_id"]):
            raise BadParameter("client_id is not a client id")
        filters["client_id"] = seen["client_id"]
    if "event" in seen:
        filters["event_id"] = _int("event", seen["event"], 0, 999_999)
        if filters["event_id"] not in _EVENT_IDS:
            raise BadParameter(f"event must be one of {', '.join(map(str, sorted(_EVENT_IDS)))}")
    if "transaction" in seen:
        if seen["transaction"] not in EVENTS:
            raise BadParameter(f"transaction must be one of {', '.join(EVENTS)}")
        filters["transaction"] = seen["transaction"]
    if "outcome" in seen:
        filters["outcome"] = _int("outcome", seen["outcome"], 0, 12)
        if filters["outcome"] not in OUTCOMES:
            raise BadParameter("outcome must be 0, 4, 8 or 12 (PS3.15 EventOutcomeIndicator)")
    return filters, limit


async def read_audit(request: Request) -> Response:
    """GET /admin/audit: the caller's tenant's audit trail, newest first, filtered, paged by cursor
    (admin scope).  A full page carries ``Link: <...>; rel="next"``."""
    pairs = list(request.query_params.multi_items())
    filters, limit = audit_filters(pairs)
    async with connection(request.app.state.pool) as conn:
        rows = await access_db.read_audit(conn, request.state.tenant, limit=limit, **filters)
    for row in rows:
        row["at"] = row["at"].isoformat()
    headers = {}
    if len(rows) == limit:  # perhaps more: the next page starts below this one's last row
        query = [(k, v) for k, v in pairs if k != "cursor"] + [("cursor", cursor_of(rows[-1]["pk"]))]
        headers["Link"] = f'<{request.state.base_url}/admin/audit?{urlencode(query)}>; rel="next"'
    return JSONResponse(rows, headers=headers)
