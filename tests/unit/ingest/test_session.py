"""IngestSession driven directly, against the in-memory store: no HTTP, no multipart, no index.

Every case here fails before the index is needed (the session asks the index only for instances
whose objects are durable), so the session is given no pool; the cases that store are in
tests/integration/ingest/, against the suite's real PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.dicom import status, structure
from dicomweb_server.errors import PayloadTooLarge
from dicomweb_server.ingest.origin import C_STORE, STOW_RS, UPLOAD, Origin
from dicomweb_server.ingest.outcome import Outcome
from dicomweb_server.ingest.session import (
    PART_TYPE_COMMENT,
    STORAGE_FULL_COMMENT,
    STUDY_MISMATCH_COMMENT,
    IngestSession,
)
from dicomweb_server.settings import IngestSettings
from dicomweb_server.storage.base import new_key
from dicomweb_server.storage.memory import MemoryStore
from tests.support.dicomfiles import instance, nested

STUDY = "1.2.826.0.1.3680043.8.498.1"
ORIGIN = Origin(STOW_RS, "test-client", peer="127.0.0.1:50000")
SETTINGS = IngestSettings()


def session(store: MemoryStore, study: str | None = None, **limits: Any) -> IngestSession:
    settings = dataclasses.replace(SETTINGS, **limits)
    return IngestSession(ORIGIN, "default", study, settings, store, pool=None, receiving=False)


async def ingest(s: IngestSession, *parts: bytes, chunk: int = 65536) -> Outcome:
    """Feed each part as a channel would, in chunks of ``chunk`` bytes, and finish."""
    async with s:
        for data in parts:
            s.begin_part("application/dicom")
            for i in range(0, len(data), chunk):
                await s.feed(data[i : i + chunk])
            await s.end_part()
        return await s.finish()


def reasons(outcome: Outcome) -> list[tuple[int, str]]:
    return [(f.reason, f.comment) for f in outcome.failed]


def test_origin_is_a_value() -> None:
    assert Origin(C_STORE, calling_ae="MODALITY", called_ae="HUB") == Origin(
        C_STORE, calling_ae="MODALITY", called_ae="HUB"
    )
    assert hash(Origin(UPLOAD, "c1")) == hash(Origin(UPLOAD, "c1"))
    with pytest.raises(AttributeError):
        ORIGIN.channel = "other"  # type: ignore[misc]


@pytest.mark.parametrize("chunk", [1 << 20, 4096, 97])
async def test_not_dicom_fails_alone_and_stores_nothing(chunk: int) -> None:
    store = MemoryStore()
    outcome = await ingest(session(store), b"this is no DICOM file " * 50, chunk=chunk)
    assert outcome.stored == ()
    assert [f.reason for f in outcome.failed] == [status.CANNOT_UNDERSTAND]
    assert outcome.failed[0].sop_instance_uid is None
    assert store.data == {} and store.uploads == {}


async def test_an_instance_of_another_study_fails_with_a900_and_its_uids() -> None:
    store = MemoryStore()
    data = instance("1.2.3.9", sop="1.2.3.9.1")
    outcome = await ingest(session(store, STUDY), data)
    assert reasons(outcome) == [(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH_COMMENT)]
    assert outcome.failed[0].sop_instance_uid == "1.2.3.9.1"
    assert outcome.failed[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert store.data == {}


@pytest.mark.parametrize("chunk", [1 << 20, 1000])
async def test_a_truncated_instance_is_refused_and_its_object_removed(chunk: int) -> None:
    store = MemoryStore()
    data = instance(STUDY, sop="1.2.3.4.5", size=256)  # pixel data 128 KiB: the header parses first
    outcome = await ingest(session(store), data[: len(data) // 2], chunk=chunk)
    assert outcome.stored == ()
    assert [(f.reason, f.sop_instance_uid) for f in outcome.failed] == [
        (status.CANNOT_UNDERSTAND, "1.2.3.4.5")
    ]
    assert store.data == {} and store.uploads == {}  # its writer was aborted


async def test_sequences_nested_too_deep_fail_that_instance() -> None:
    store = MemoryStore()
    limit = structure.MAX_SEQUENCE_DEPTH
    outcome = await ingest(session(store), nested(STUDY, limit + 1, sop="1.2.3.4.6"), chunk=512)
    assert [(f.reason, f.comment, f.sop_instance_uid) for f in outcome.failed] == [
        (status.CANNOT_UNDERSTAND, f"Sequences are nested deeper than {limit} levels", "1.2.3.4.6")
    ]
    assert store.data == {}


async def test_a_part_that_is_not_dicom_by_its_media_type_is_skipped() -> None:
    store = MemoryStore()
    async with session(store) as s:
        s.begin_part("image/jpeg")
        await s.feed(instance(STUDY))
        await s.end_part()
        outcome = await s.finish()
    assert reasons(outcome) == [(status.CANNOT_UNDERSTAND, PART_TYPE_COMMENT.format(type="image/jpeg"))]
    assert store.data == {}


async def test_out_of_space_fails_each_instance_with_a700() -> None:
    store = MemoryStore(capacity=0)
    parts = [instance(STUDY, sop=f"1.2.3.4.{n}") for n in (1, 2)]
    outcome = await ingest(session(store), *parts)
    assert [(f.reason, f.comment, f.sop_instance_uid) for f in outcome.failed] == [
        (status.REFUSED_OUT_OF_RESOURCES, STORAGE_FULL_COMMENT, "1.2.3.4.1"),
        (status.REFUSED_OUT_OF_RESOURCES, STORAGE_FULL_COMMENT, "1.2.3.4.2"),
    ]
    assert store.data == {} and store.uploads == {}


async def test_a_part_over_the_limit_fails_the_session_and_removes_what_it_wrote() -> None:
    """Request-level problems raise; leaving the session then removes objects already durable."""
    store = MemoryStore()
    small, large = instance(STUDY), instance(STUDY, size=128)
    s = session(store, max_part_bytes=len(small) + 10)
    with pytest.raises(PayloadTooLarge):
        await ingest(s, small, large)
    assert store.data == {}
    # A commit cancelled before it began leaves an unfinished write, as a crash would: the sweep's
    # remove_stale_uploads takes it after the grace period.
    assert len(store.uploads) <= 1


async def test_more_parts_than_allowed_fail_the_session() -> None:
    store = MemoryStore()
    with pytest.raises(PayloadTooLarge, match="more than 2 parts"):
        await ingest(session(store, max_parts=2), *[instance(STUDY) for _ in range(3)])
    assert store.data == {}


async def test_a_header_over_the_budget_fails_with_a700() -> None:
    store = MemoryStore()
    data = instance(STUDY, ImageComments="x" * 40_000)
    outcome = await ingest(session(store, header_budget_bytes=32 * 1024), data, chunk=4096)
    assert reasons(outcome) == [(status.REFUSED_OUT_OF_RESOURCES, dicom.OVER_BUDGET_COMMENT)]


@pytest.mark.parametrize("whole", [False, True])
async def test_a_header_over_the_budget_in_one_chunk_fails_with_a700(whole: bool) -> None:
    """A part fed whole (the report delivery feeds its Encapsulated PDF in one call) whose header
    is over a budget the probe had not reached yet fails with A700; it hit an assertion in
    ``end_part`` (found by tests/e2e/workflow/test_order_crash.py with a 16 MiB report)."""
    store = MemoryStore()
    data = instance(STUDY, ImageComments="x" * (2 << 20))
    chunk = len(data) if whole else 65536
    outcome = await ingest(session(store, header_budget_bytes=1 << 20), data, chunk=chunk)
    assert reasons(outcome) == [(status.REFUSED_OUT_OF_RESOURCES, dicom.OVER_BUDGET_COMMENT)]
    assert store.data == {}


async def test_a_header_past_the_first_probe_is_waited_for() -> None:
    """A header longer than the first probe (16 KiB) is parsed again with more bytes, not failed."""
    store = MemoryStore()
    data = instance("1.2.3.9", sop="1.2.3.9.2", ImageComments="x" * 40_000)
    outcome = await ingest(session(store, STUDY), data, chunk=4096)
    assert reasons(outcome) == [(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH_COMMENT)]


async def test_store_object_runs_the_same_pipeline_and_removes_the_source() -> None:
    store = MemoryStore()
    key = new_key("default")
    writer = store.writer(key)
    await writer.write(instance("1.2.3.9", sop="1.2.3.9.3"))
    await writer.commit()
    async with session(store, STUDY) as s:
        await s.store_object(key)
        outcome = await s.finish()
    assert reasons(outcome) == [(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH_COMMENT)]
    assert store.data == {}  # the outcome is final: the source is gone


async def test_a_failed_session_leaves_the_source_of_store_object_for_a_retry() -> None:
    store = MemoryStore()
    key = new_key("default")
    writer = store.writer(key)
    await writer.write(instance(STUDY, size=128))
    await writer.commit()
    with pytest.raises(PayloadTooLarge):
        async with session(store, max_part_bytes=1000) as s:
            await s.store_object(key)
    assert set(store.data) == {key}
