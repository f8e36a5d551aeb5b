"""STOW-RS (PS3.18 §10.5): stream each part into object storage, index the request in one transaction.

Per part: keep a bounded prefix in memory until the DICOM header parses, then
write the part (preamble zeroed) to its object while hashing it.  Per-instance
problems become FailedSOPSequence items; request-level problems raise.  Nothing
is acknowledged before every stored object is durable and the index committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server import db, metrics
from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.dicom import status, structure
from dicomweb_server.dicom.frames import FragmentScanner, FrameIndex
from dicomweb_server.dicom.part10 import Failure
from dicomweb_server.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageError,
    UnsupportedMediaType,
)
from dicomweb_server.settings import Settings
from dicomweb_server.storage import ObjectStore, ObjectWriter, StorageFull, new_key
from dicomweb_server.web.multipart import (
    Event,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
HEADER_PROBE = 16 * 1024  # first try at the header; each retry waits for 16x more, up to the budget
MAX_PENDING_COMMITS = 16
EMPTY_BODY = "empty request body: send a DICOM PS3.10 file or a multipart/related body"
INLINE_PARSE = 256 * 1024  # larger prefixes are parsed in a worker thread
# Error Comments (LO, 64 characters: tests/unit/test_stow_response.py checks them).
PART_TYPE_COMMENT = "Part media type {type} is not application/dicom"
PART_TYPE_FALLBACK = "The part's media type is not application/dicom"
STUDY_MISMATCH_COMMENT = "StudyInstanceUID does not match the study in the request URL"
STORAGE_FULL_COMMENT = "Out of storage space"


@dataclass
class _Part:
    prefix: bytearray | None = field(default_factory=bytearray)
    size: int = 0
    parse_at: int = HEADER_PROBE
    skip: bool = False
    desc: dicom.Description | None = None
    key: str | None = None
    writer: ObjectWriter | None = None
    scanner: FragmentScanner | None = None  # encapsulated Pixel Data: finds the frames as they pass
    checker: structure.Checker | None = None  # walks every element: is the data set complete?


class Stored(Protocol):
    """What the response names of a stored instance."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...


@dataclass
class _Done:
    """A part whose object is being made durable: only its compact index record is kept
    (the parsed header is dropped), so memory stays flat however many parts a body has."""

    record: db.Record
    commit: asyncio.Future[bytes]


class Ingest:
    """One STOW request: parts in, a Store Instances Response out."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        pool: Any,
        tenant: str,
        study_uid: str | None,
        base: str,
    ):
        self.settings = settings
        self.store = store
        self.pool = pool
        self.tenant = tenant
        self.study_uid = study_uid
        self.base = base
        self.parts = 0
        self.body_bytes = 0
        self.part: _Part | None = None
        self.done: list[_Done] = []
        self.committing: set[asyncio.Future[bytes]] = set()
        self.shared: dict[str, Any] = {}  # one copy of each study's and series' attributes (_record)
        self.failed: list[Failure] = []
        self.keys: list[str] = []  # every object this request created, for clean-up on failure
        self.stored_study: str | None = None

    # -- streaming ----------------------------------------------------------------
    async def run(self, content_type: str | None, length: str | None, body: AsyncIterator[bytes]) -> Response:
        media = parse_media_type(content_type)
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"Request body exceeds the limit of {self.settings.max_body_bytes} bytes")
        try:
            if media.type == "multipart/related":
                await self._multipart(media.params, body)
            elif media.type == "application/dicom":
                await self._single(body)
            else:
                raise UnsupportedMediaType(
                    'STOW-RS accepts multipart/related; type="application/dicom" or application/dicom'
                )
            return await self._finish()
        except BaseException:
            await self._discard()
            raise

    async def _multipart(self, params: dict[str, str], body: AsyncIterator[bytes]) -> None:
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaType(
                f'multipart/related type "{part_type}" is not supported; use application/dicom'
            )
        if "boundary" not in params:
            raise BadRequest("multipart/related Content-Type has no boundary parameter")
        reader = MultipartReader(params["boundary"])
        async for chunk in body:
            self._count(chunk)
            for event in reader.feed(chunk):
                await self._on(event)
        if self.body_bytes == 0:
            raise BadRequest(EMPTY_BODY)
        reader.close()
        if self.parts == 0:
            raise BadRequest("multipart body has no parts: it holds only the closing boundary delimiter")

    async def _single(self, body: AsyncIterator[bytes]) -> None:
        await self._on(PartStart({}))
        async for chunk in body:
            self._count(chunk)
            if chunk:
                await self._on(PartData(chunk))
        if self.body_bytes == 0:
            raise BadRequest(EMPTY_BODY)
        await self._on(PartEnd())

    def _count(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"Request body exceeds the limit of {self.settings.max_body_bytes} bytes")

    async def _on(self, event: Event) -> None:
        if isinstance(event, PartStart):
            self.parts += 1
            if self.parts > self.settings.max_parts:
                raise PayloadTooLarge(f"Request has more than {self.settings.max_parts} parts")
            self.part = _Part(parse_at=min(HEADER_PROBE, self.settings.header_budget_bytes))
            ctype = parse_media_type(event.headers.get("content-type")).type
            if ctype not in ("", "application/dicom"):
                self.part.skip = True
                comment = dicom.fit(PART_TYPE_COMMENT.format(type=ctype), PART_TYPE_FALLBACK)
                self.failed.append(Failure(status.CANNOT_UNDERSTAND, comment))
            return
        part = self.part
        assert part is not None
        if isinstance(event, PartData):
            part.size += len(event.data)
            if part.size > self.settings.max_part_bytes:
                raise PayloadTooLarge(f"A part exceeds the limit of {self.settings.max_part_bytes} bytes")
            if part.skip:
                return
            if part.writer is not None:
                if part.scanner is not None:
                    part.scanner.feed(event.data, part.size - len(event.data))
                if part.checker is not None:
                    part.checker.feed(event.data)
                await part.writer.write(event.data)
                return
            assert part.prefix is not None
            part.prefix += event.data
            if len(part.prefix) >= part.parse_at:
                await self._parse(part, complete=False)
            return
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

    async def _incomplete(self, part: _Part, problem: structure.Problem) -> None:
        """The part ended before its data set did (or its structure is broken): store nothing."""
        assert part.writer is not None and part.desc is not None and part.key
        await part.writer.abort()
        self.keys.remove(part.key)
        reason = status.REFUSED_OUT_OF_RESOURCES if problem.limit else status.CANNOT_UNDERSTAND
        self.failed.append(Failure(reason, problem.comment, part.desc.sop_class_uid, part.desc.sop_uid))
        part.writer = None
        part.skip = True

    async def _parse(self, part: _Part, *, complete: bool) -> None:
        """Describe a part from its prefix; on success open its object and write the prefix."""
        assert part.prefix is not None
        budget = self.settings.header_budget_bytes
        complete = complete and len(part.prefix) <= budget
        describe = functools.partial(
            dicom.describe,
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
            if described is dicom.OVER_BUDGET and not complete and part.parse_at < budget:
                part.parse_at = min(budget, part.parse_at * 16)  # the header goes on: wait for more
                return
            self._fail(part, described)
            return
        failure = self._out_of_scope(described)
        if failure is not None:
            self._fail(part, failure)
            return
        part.desc = described
        part.key = new_key(self.tenant)
        self.keys.append(part.key)
        part.writer = self.store.writer(part.key)
        prefix, part.prefix = part.prefix, None
        prefix[: dicom.PREAMBLE] = bytes(dicom.PREAMBLE)  # PS3.10 §7.5: never keep a foreign preamble
        if described.pixel is not None and described.pixel.length is None:
            part.scanner = FragmentScanner(described.pixel.offset)
            part.scanner.feed(prefix, 0)
        part.checker = described.checker
        if part.checker is not None:  # it walked the prefix it was given: the rest is new to it
            part.checker.deadline = None
            part.checker.feed(memoryview(prefix)[part.checker.seen :])
        await part.writer.write(bytes(prefix))

    def _out_of_scope(self, desc: dicom.Description) -> Failure | None:
        if self.study_uid is None or desc.study_uid == self.study_uid:
            return None
        return Failure(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH_COMMENT, desc.sop_class_uid, desc.sop_uid
        )

    def _fail(self, part: _Part, failure: Failure) -> None:
        part.skip = True
        part.prefix = None
        self.failed.append(failure)

    async def _close_part(self, part: _Part) -> None:
        assert part.writer is not None and part.desc is not None and part.key
        # Backpressure: at most MAX_PENDING_COMMITS objects being made durable at once.
        self.committing = {f for f in self.committing if not f.done()}
        while len(self.committing) >= MAX_PENDING_COMMITS:
            _, self.committing = await asyncio.wait(self.committing, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(part.writer.commit())
        self.committing.add(task)
        record = _record(part.desc, part.key, part.size, _frame_index(part), self.shared)
        self.done.append(_Done(record, task))

    # -- commit -------------------------------------------------------------------
    async def _finish(self) -> Response:
        await asyncio.gather(*(d.commit for d in self.done), return_exceptions=True)
        durable: list[_Done] = []
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
                durable.append(d)
        outcome = db.BatchOutcome()
        if durable:
            outcome = await db.store_batch(
                self.pool,
                self.tenant,
                [replace(d.record, sha256=d.commit.result()) for d in durable],
                overwrite=self.settings.duplicate_policy == "overwrite",
            )
        self.keys = []  # committed: from here on, only explicitly unreferenced objects are removed
        await self._delete(outcome.unreferenced_keys)
        return self._response(durable, outcome)

    def _response(self, durable: list[_Done], outcome: db.BatchOutcome) -> Response:
        referenced = [d.record for d in durable if d.record.object_key in outcome.stored]
        failed = self.failed + [
            outcome.failed[d.record.object_key] for d in durable if d.record.object_key in outcome.failed
        ]
        studies = {h.study_uid for h in referenced} or ({self.study_uid} if self.study_uid else set())
        self.stored_study = next(iter(studies)) if len(studies) == 1 else None
        study_url = f"{self.base}/dicomweb/studies/{next(iter(studies))}" if len(studies) == 1 else None
        metrics.stow_result(len(referenced), sum(r.size for r in referenced), [f.reason for f in failed])
        body = store_response(self.base, study_url, referenced, failed)
        status = 200 if not failed else 202 if referenced else 409
        headers = {"Content-Location": study_url} if study_url and referenced else {}
        return Response(orjson.dumps(body), status, headers, media_type=DICOM_JSON)

    async def _discard(self) -> None:
        """The request failed: remove every object it wrote (none is referenced by the index)."""
        for d in self.done:
            d.commit.cancel()
        await asyncio.gather(*(d.commit for d in self.done), return_exceptions=True)
        if self.part is not None and self.part.writer is not None:
            with contextlib.suppress(Exception):
                await self.part.writer.abort()
        await self._delete(self.keys)

    async def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.store.delete(key)
            except StorageError:
                log.warning(
                    "object delete failed; the sweep will remove it", extra={"event": "delete_failed"}
                )


def _frame_index(part: _Part) -> FrameIndex | None:
    """Where the part's frames lie in its object, when that is known (see frames.py)."""
    assert part.desc is not None
    pixel = part.desc.pixel
    if part.scanner is not None:
        return part.scanner.index(part.desc.instance.get("number_of_frames") or 1)
    if pixel is None or pixel.length is None or pixel.offset + pixel.length > part.size:
        return None
    return FrameIndex(pixel_offset=pixel.offset, pixel_length=pixel.length)


def _record(
    desc: dicom.Description, key: str, size: int, frames: FrameIndex | None, shared: dict[str, Any]
) -> db.Record:
    """The index record; its SHA-256 is filled in when the object's commit returns it.

    Records wait for the request's one transaction, so a long body keeps thousands: the study and
    series attributes, the same for every instance of a series, are kept once (``shared``, keyed
    by their JSON text), which takes about 40% off each record."""
    fields = vars(desc) | {"object_key": key, "size": size, "frames": frames, "checker": None}
    for text, values in (("study_attrs", "study"), ("series_attrs", "series")):
        fields[text], fields[values] = shared.setdefault(fields[text], (fields[text], fields[values]))
    return db.Record(**fields)


def store_response(
    base: str, study_url: str | None, stored: Sequence[Stored], failed: list[Failure]
) -> dict[str, Any]:
    """PS3.18 Table I.1-1 Store Instances Response Module; empty sequences are left out."""
    body: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [study_url]} if study_url else {"vr": "UR"}}
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [h.sop_class_uid]},
                    "00081155": {"vr": "UI", "Value": [h.sop_uid]},
                    "00081190": {
                        "vr": "UR",
                        "Value": [
                            f"{base}/dicomweb/studies/{h.study_uid}/series/{h.series_uid}/instances/{h.sop_uid}"
                        ],
                    },
                }
                for h in stored
            ],
        }
    identified = [f for f in failed if f.sop_instance_uid]
    other = [f for f in failed if not f.sop_instance_uid]
    if identified:
        body["00081198"] = {"vr": "SQ", "Value": [_failure_item(f) for f in identified]}
    if other:
        body["0008119A"] = {"vr": "SQ", "Value": [_failure_item(f) for f in other]}
    return body


def _failure_item(f: Failure) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if f.sop_instance_uid:
        item["00081150"] = {"vr": "UI", "Value": [f.sop_class_uid]} if f.sop_class_uid else {"vr": "UI"}
        item["00081155"] = {"vr": "UI", "Value": [f.sop_instance_uid]}
    item["00081197"] = {"vr": "US", "Value": [f.reason]}
    item["00000902"] = {"vr": "LO", "Value": [f.comment[:64]]}  # Error Comment: a readable reason
    return item


async def store_instances(request: Request) -> Response:
    """POST /dicomweb/studies[/{study}]."""
    state = request.app.state  # the study UID in the path, if any, is checked by app.uids_checked
    ingest = Ingest(
        state.settings,
        state.store,
        state.pool,
        request.state.tenant,
        request.path_params.get("study"),
        request.state.base_url,
    )
    response = await ingest.run(
        request.headers.get("content-type"), request.headers.get("content-length"), request.stream()
    )
    request.state.study_uid = ingest.stored_study  # for the audit trail
    state.ingested.set()  # the index grew: let the statistics keeper look
    return response
