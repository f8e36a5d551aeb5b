"""The one intake: an ``IngestSession`` stores instances, whatever channel brought them.

A session is opened per request or association, as dcm4chee's ``StoreService`` opens a
``StoreSession`` for a STOW request and a C-STORE association alike (DESIGN.md, "Models worth
copying" 1).  The channel feeds it parts (``begin_part`` / ``feed`` / ``end_part``) or names an
object already in the store (``store_object``); ``finish`` makes every object durable, indexes them
in one transaction and returns an ``Outcome``, which each channel maps to its own status.

Per part: keep a bounded prefix in memory until the DICOM header parses, then write the part
(preamble zeroed, PS3.10 §7.5) to its object while hashing it.  Per-instance problems are data
(a ``Failure`` with its PS3.18 FailureReason); request-level problems (a limit, the store or the
index unreachable) raise, and the session then removes every object it wrote.  Nothing is
acknowledged before every stored object is durable and the index committed.  The session never
sees multipart, Starlette or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from dicomweb_server import events
from dicomweb_server.db import arrival, orders
from dicomweb_server.db.pool import Connection, Pool, connection, in_transaction
from dicomweb_server.db.store import BatchOutcome, Record, store_batch
from dicomweb_server.dicom import part10, status, structure
from dicomweb_server.dicom.frames import FragmentScanner
from dicomweb_server.dicom.part10 import Failure
from dicomweb_server.errors import PayloadTooLarge, ServiceUnavailable, StorageError
from dicomweb_server.events import Change, InstanceStored, NewEvent
from dicomweb_server.ingest.origin import REPORT, Origin
from dicomweb_server.ingest.outcome import Outcome, Stored
from dicomweb_server.ingest.part import HEADER_PROBE, Durable, Part, frame_index, index_record
from dicomweb_server.jobs import queue
from dicomweb_server.lifecycle import SETTLE_STEP
from dicomweb_server.settings import IngestSettings, WorkflowSettings
from dicomweb_server.storage.base import ObjectStore, StorageFull, new_key

log = logging.getLogger(__name__)

MAX_PENDING_COMMITS = 16
INLINE_PARSE = 256 * 1024  # larger prefixes are parsed in a worker thread
DICOM_MEDIA_TYPES = ("", "application/dicom")  # a part without a Content-Type is taken as DICOM
# Error Comments (LO, 64 characters: tests/unit/dicomweb/test_stow.py checks them).
PART_TYPE_COMMENT = "Part media type {type} is not application/dicom"
PART_TYPE_FALLBACK = "The part's media type is not application/dicom"
STUDY_MISMATCH_COMMENT = "StudyInstanceUID does not match the study in the request URL"
STORAGE_FULL_COMMENT = "Out of storage space"


class IngestSession:
    """One request's (or association's) instances in, an ``Outcome`` out.

    Use it as an async context manager: leaving it without ``finish`` (a request-level error, a
    cancelled request) removes every object the session wrote; none is referenced by the index."""

    def __init__(
        self,
        origin: Origin,
        tenant: str,
        expected_study: str | None,
        settings: IngestSettings,
        store: ObjectStore,
        pool: Pool,
        workflow: WorkflowSettings | None = None,
        *,
        receiving: bool = True,
    ):
        self.origin = origin
        self.workflow = workflow or WorkflowSettings()
        # Mark each study ``receiving`` in its arrival row while the session is open (off only
        # for sessions that never reach the index: the unit tests against the memory store).
        # Our own report (REPORT) neither opens nor counts as an arrival: it must not reopen its study.
        self.receiving = receiving and origin.channel != REPORT
        self.opened: list[str] = []  # studies this session marked receiving (db/arrival.py)
        self.tenant = tenant
        self.expected_study = expected_study  # the study in the request URL: others fail (0xA900)
        self.settings = settings
        self.store = store
        self.pool = pool
        self.parts = 0
        self.part: Part | None = None
        self.done: list[Durable] = []
        self.committing: set[asyncio.Future[bytes]] = set()
        self.shared: dict[str, Any] = {}  # one copy of each study's and series' attributes
        self.failed: list[Failure] = []
        self.keys: list[str] = []  # every object this session created, for clean-up on failure
        self.sources: list[str] = []  # objects handed to store_object, removed once the outcome is final
        self.finished = False

    async def __aenter__(self) -> IngestSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.finished:
            await self._discard()

    # -- parts ----------------------------------------------------------------------
    def begin_part(self, media_type: str = "") -> None:
        """A new instance starts; ``media_type`` is its declared type (lower case), if any."""
        self.parts += 1
        if self.parts > self.settings.max_parts:
            raise PayloadTooLarge(f"Request has more than {self.settings.max_parts} parts")
        self.part = Part(parse_at=min(HEADER_PROBE, self.settings.header_budget_bytes))
        if media_type not in DICOM_MEDIA_TYPES:
            self.part.skip = True
            comment = part10.fit(PART_TYPE_COMMENT.format(type=media_type), PART_TYPE_FALLBACK)
            self.failed.append(Failure(status.CANNOT_UNDERSTAND, comment))

    async def feed(self, chunk: bytes | memoryview) -> None:
        """The next bytes of the current part; awaiting it is the backpressure."""
        part = self.part
        assert part is not None
        part.size += len(chunk)
        if part.size > self.settings.max_part_bytes:
            raise PayloadTooLarge(f"A part exceeds the limit of {self.settings.max_part_bytes} bytes")
        if part.skip:
            return
        if part.writer is not None:
            if part.scanner is not None:
                part.scanner.feed(chunk, part.size - len(chunk))
            if part.checker is not None:
                part.checker.feed(chunk)
            await part.writer.write(chunk)
            return
        assert part.prefix is not None
        part.prefix += chunk
        if len(part.prefix) >= part.parse_at:
            await self._parse(part, complete=False)

    async def end_part(self) -> None:
        """The current part is complete: its object starts to become durable, or it failed."""
        part = self.part
        assert part is not None
        if not part.skip:
            if part.writer is None:  # the whole part is in memory
                await self._parse(part, complete=True)
            assert part.writer is not None or part.skip  # stored or reported, never dropped
            if part.writer is not None:
                problem = part.checker.finish() if part.checker is not None else None
                if problem is None:
                    await self._close_part(part)
                else:
                    await self._incomplete(part, problem)
        self.part = None

    async def store_object(self, key: str) -> None:
        """Ingest an object already in the store (a presigned upload, a file an SFTP client left).

        It is read back and run through the very pipeline a streamed part takes, into an object
        of its own: so its preamble is zeroed, its hash and frames are of what is stored, and the
        duplicate policy and reason codes are the same.  The source object is removed once the
        outcome is final; if the session fails it stays, for a retry (and, unreferenced, the sweep)."""
        self.begin_part()
        async for chunk in self.store.read(key):
            await self.feed(chunk)
        await self.end_part()
        self.sources.append(key)

    async def _parse(self, part: Part, *, complete: bool) -> None:
        """Describe a part from its prefix; on success open its object and write the prefix."""
        assert part.prefix is not None
        budget = self.settings.header_budget_bytes
        whole = complete  # the part has ended: waiting for more bytes is no longer possible
        complete = complete and len(part.prefix) <= budget
        describe = functools.partial(
            part10.describe,
            bytes(part.prefix[:budget]),
            complete=complete,
            budget=budget,
            threshold=self.settings.bulk_data_threshold,
            seconds=self.settings.header_seconds,
            inflate_limit=self.settings.max_part_bytes,
        )
        # A big header parses in a thread, so the event loop keeps serving other requests.
        big = len(part.prefix) > INLINE_PARSE
        described = await asyncio.to_thread(describe) if big else describe()
        if isinstance(described, Failure):
            if described is part10.OVER_BUDGET and not whole and part.parse_at < budget:
                part.parse_at = min(budget, part.parse_at * 16)  # the header goes on: wait for more
                return
            self._fail(part, described)
            return
        failure = self._out_of_scope(described)
        if failure is not None:
            self._fail(part, failure)
            return
        if self.receiving and described.study_uid not in self.opened:
            await self._open(described.study_uid)
        part.desc = described
        part.key = new_key(self.tenant)
        self.keys.append(part.key)
        part.writer = self.store.writer(part.key)
        prefix, part.prefix = part.prefix, None
        prefix[: part10.PREAMBLE] = bytes(part10.PREAMBLE)  # PS3.10 §7.5: never keep a foreign preamble
        if described.pixel is not None and described.pixel.length is None:
            part.scanner = FragmentScanner(described.pixel.offset)
            part.scanner.feed(prefix, 0)
        part.checker = described.checker
        if part.checker is not None:  # it walked the prefix it was given: the rest is new to it
            part.checker.deadline = None
            part.checker.feed(memoryview(prefix)[part.checker.seen :])
        await part.writer.write(bytes(prefix))

    async def _open(self, study: str) -> None:
        """The study is ``receiving`` while this session is open (the lifecycle's first status)."""
        async with connection(self.pool) as conn:
            await arrival.open_studies(conn, self.tenant, [study], self.workflow.open_seconds)
        self.opened.append(study)

    def _out_of_scope(self, desc: part10.Description) -> Failure | None:
        if self.expected_study is None or desc.study_uid == self.expected_study:
            return None
        return Failure(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH_COMMENT, desc.sop_class_uid, desc.sop_uid
        )

    def _fail(self, part: Part, failure: Failure) -> None:
        part.skip = True
        part.prefix = None
        self.failed.append(failure)

    async def _incomplete(self, part: Part, problem: structure.Problem) -> None:
        """The part ended before its data set did (or its structure is broken): store nothing."""
        assert part.writer is not None and part.desc is not None and part.key
        await part.writer.abort()
        self.keys.remove(part.key)
        reason = status.REFUSED_OUT_OF_RESOURCES if problem.limit else status.CANNOT_UNDERSTAND
        self.failed.append(Failure(reason, problem.comment, part.desc.sop_class_uid, part.desc.sop_uid))
        part.writer = None
        part.skip = True

    async def _close_part(self, part: Part) -> None:
        assert part.writer is not None and part.desc is not None and part.key
        # Backpressure: at most MAX_PENDING_COMMITS objects being made durable at once.
        self.committing = {f for f in self.committing if not f.done()}
        while len(self.committing) >= MAX_PENDING_COMMITS:
            _, self.committing = await asyncio.wait(self.committing, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(part.writer.commit())
        self.committing.add(task)
        record = index_record(part.desc, part.key, part.size, frame_index(part), self.shared)
        self.done.append(Durable(record, task))

    # -- the outcome ----------------------------------------------------------------
    async def finish(self) -> Outcome:
        """Wait until every object is durable, index them in one transaction, and say what
        became of each instance.  Out of space fails that instance (0xA700); any other storage
        failure fails the session (503), as does the index being unreachable."""
        await asyncio.gather(*(d.commit for d in self.done), return_exceptions=True)
        durable: list[Record] = []
        for d in self.done:
            exc = d.commit.exception()
            if isinstance(exc, StorageFull):
                self.failed.append(
                    Failure(
                        status.REFUSED_OUT_OF_RESOURCES,
                        STORAGE_FULL_COMMENT,
                        d.record.sop_class_uid,
                        d.record.sop_uid,
                    )
                )
            elif exc is not None:
                raise ServiceUnavailable("object storage unavailable") from None
            else:
                durable.append(replace(d.record, sha256=d.commit.result()))
        indexed = await self._index(durable) if durable else BatchOutcome()
        if not durable and self.opened:
            await self._close()
        self.keys = []  # committed: from here on, only explicitly unreferenced objects are removed
        self.finished = True
        await self._delete(indexed.unreferenced_keys)
        await self._delete(self.sources)
        stored = tuple(
            Stored(r.sop_class_uid, r.sop_uid, r.study_uid, r.series_uid, r.size)
            for r in durable
            if r.object_key in indexed.stored
        )
        late = (indexed.failed[r.object_key] for r in durable if r.object_key in indexed.failed)
        return Outcome(stored, (*self.failed, *late))

    async def _index(self, records: list[Record]) -> BatchOutcome:
        """The index write: every record in one transaction, with the duplicate policy, and an
        ``instance.stored`` event for each instance whose object the index now references, in
        the same transaction (no event for a change that rolled back, no change without its
        event).  A second copy of identical bytes is a success but no event: its new object is
        dropped, and the instance was announced when it first arrived."""

        async def work(conn: Connection) -> BatchOutcome:
            outcome = await store_batch(conn, self.tenant, records, overwrite=self.settings.overwrite)
            dropped = set(outcome.unreferenced_keys)
            written: list[NewEvent] = [
                InstanceStored(self.tenant, r.study_uid, r.series_uid, r.sop_uid, r.object_key)
                for r in records
                if r.object_key in outcome.stored and r.object_key not in dropped
            ]
            if self.origin.channel != REPORT:  # our own report must not reopen its study
                written += await self._arrive(conn, [r for r in records if r.object_key in outcome.inserted])
            await events.append(conn, written)
            return outcome

        return await in_transaction(self.pool, work)

    async def _arrive(self, conn: Connection, new: list[Record]) -> list[NewEvent]:
        """Each study's arrival row, in the instances' transaction (db/arrival.py): counts, bytes,
        digest, when it is due; its ``study.received``/``study.updated`` event; a study that was
        stable goes back to unstable (and its orders not yet processing with it), or, once an
        order of it is processing, counts the instances as late.  A study's first instances
        queue its settle step, in this transaction."""
        per_study: dict[str, list[Record]] = {}
        for r in new:
            per_study.setdefault(r.study_uid, []).append(r)
        arrived = [
            arrival.Arrived(s, len(rs), sum(r.size for r in rs), arrival.uid_digest([r.sop_uid for r in rs]))
            for s, rs in per_study.items()
        ]
        o = self.origin
        ae = f"{o.calling_ae}>{o.called_ae}" if o.calling_ae else None
        recorded = await arrival.record(conn, self.tenant, arrived, self.opened, o.channel, ae, self.workflow)
        out: list[NewEvent] = []
        regressed = []
        for rec in recorded:
            if rec.received:
                out.append(
                    Change(self.tenant, events.STUDY_RECEIVED, rec.study_uid, {"instances": rec.added})
                )
            elif rec.added:
                data = {"instances_added": rec.added, "late": bool(rec.late)}
                out.append(Change(self.tenant, events.STUDY_UPDATED, rec.study_uid, data))
            if rec.regressed:
                regressed.append(rec.study_uid)
            if (rec.received or rec.regressed) and rec.due_at is not None:
                await queue.enqueue(
                    conn,
                    SETTLE_STEP,
                    {"tenant": self.tenant, "study": rec.study_uid},
                    key=f"{SETTLE_STEP}:{self.tenant}:{rec.study_uid}",
                    after=max(0.0, (rec.due_at - datetime.now(UTC)).total_seconds()),
                )
        for m in await orders.regress(conn, self.tenant, regressed, actor=f"ingest:{o.channel}"):
            moved = {"order_id": m.order_id, "from": m.source, "to": m.target, "reason": "late_instances"}
            out.append(Change(self.tenant, events.ORDER_STATUS_CHANGED, m.order_id, moved))
        return out

    async def _close(self) -> None:
        """This session stored nothing: its studies are no longer receiving because of it."""
        with contextlib.suppress(ServiceUnavailable):
            async with connection(self.pool) as conn:
                await arrival.close_studies(conn, self.tenant, self.opened)
        self.opened = []

    async def _discard(self) -> None:
        """The session failed: remove every object it wrote (none is referenced by the index)."""
        # Let started commits finish rather than cancel them: a commit running in a worker thread
        # cannot be stopped, and would otherwise land its object after the delete below.
        await asyncio.gather(*(d.commit for d in self.done), return_exceptions=True)
        if self.part is not None and self.part.writer is not None:
            with contextlib.suppress(Exception):
                await self.part.writer.abort()
        await self._delete(self.keys)
        self.keys = []
        if self.opened:
            await self._close()

    async def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.store.delete(key)
            except StorageError:
                log.warning(
                    "object delete failed; the sweep will remove it", extra={"event": "delete_failed"}
                )
