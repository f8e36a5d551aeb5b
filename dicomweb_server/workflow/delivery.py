"""The delivery step (issue #12 §4): what happens to a report once the worker has stored it.

The worker API's ``complete`` stores the PDF/JSON/CSV objects, writes the report row and queues
``report.deliver``; the order stays ``processing`` until every delivery in ``DELIVERIES`` has
succeeded (``deliver``, → ``delivered``) or one failed (``delivery_fail``, → ``failed`` with
reason ``delivery`` and the failure in the history).  Today there is one delivery: the report
as an Encapsulated PDF instance stored back into each study of the order (dicom/encapsulated.py),
through the one intake with the ``report`` channel, so QIDO-RS finds it and WADO-RS returns it.
The notification and DICOM-push issues add theirs to the tuple.

Idempotent, as every queued step must be: it does nothing unless the order is ``processing``,
and the instance's bytes depend only on the report, so a second run (the process died after
storing, before the move) re-sends an identical instance, which ingest treats as a success that
adds nothing (no second instance, no event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dicomweb_server import events
from dicomweb_server.db import orders, reports
from dicomweb_server.db.pool import Pool, connection, transaction
from dicomweb_server.dicom import encapsulated
from dicomweb_server.dicom.resources import path
from dicomweb_server.ingest.origin import REPORT, Origin
from dicomweb_server.ingest.session import IngestSession
from dicomweb_server.lifecycle import Action, Status
from dicomweb_server.settings import Settings
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.workflow.stability import order_moved

DELIVER_STEP = "report.deliver"
ACTOR = "delivery"
TITLE = "Brain MRI analysis report"


def deliver_key(report_id: str) -> str:
    """The queue's dedupe key of one report's delivery step (the worker API queues it so too)."""
    return f"{DELIVER_STEP}:{report_id}"


@dataclass(frozen=True)
class Context:
    """One report to deliver and the parts a delivery needs."""

    tenant: str
    report: dict[str, Any]
    studies: list[str]
    pool: Pool
    store: ObjectStore
    settings: Settings


@dataclass
class Delivered:
    """What one delivery did: the instances it stored, and its failures (none: it succeeded)."""

    instances: list[dict[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


Delivery = Callable[[Context], Awaitable[Delivered]]


async def _read(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


async def store_in_study(ctx: Context) -> Delivered:
    """The report as an Encapsulated PDF instance in each of the order's studies."""
    done = Delivered()
    pdf = await _read(ctx.store, ctx.report["pdf_key"])
    for study in ctx.studies:
        async with connection(ctx.pool) as conn:
            attrs = await reports.study_attributes(conn, ctx.tenant, study) or {}
        source = encapsulated.Report(ctx.report["id"], study, attrs, pdf, TITLE, ctx.report["created_at"])
        data = await asyncio.to_thread(encapsulated.build, source)
        origin = Origin(REPORT, client_id=ACTOR)
        settings = ctx.settings
        # The document is in the data set's "header" (there is no Pixel Data after it): our own
        # instance, already in memory, may be as large as the PDF the worker was allowed to send.
        ingest = replace(
            settings.ingest, header_budget_bytes=max(settings.ingest.header_budget_bytes, len(data))
        )
        async with IngestSession(
            origin, ctx.tenant, study, ingest, ctx.store, ctx.pool, settings.workflow
        ) as session:
            session.begin_part()
            await session.feed(data)
            await session.end_part()
            outcome = await session.finish()
        done.failures += [f"study {study}: {f.comment} (0x{f.reason:04X})" for f in outcome.failed]
        for s in outcome.stored:
            url = path(s.study_uid, s.series_uid, s.sop_uid)
            done.instances.append(
                {"study_uid": s.study_uid, "series_uid": s.series_uid, "sop_uid": s.sop_uid, "url": url}
            )
    return done


# Every delivery of a report, in order; the notification and DICOM-push issues extend it.
DELIVERIES: tuple[Delivery, ...] = (store_in_study,)


async def deliver(pool: Pool, store: ObjectStore, settings: Settings, payload: dict[str, Any]) -> None:
    """The queued ``report.deliver`` step of one report: run the deliveries, then move the order."""
    tenant, report_id = payload["tenant"], payload["report"]
    async with connection(pool) as conn:
        report = await reports.get(conn, tenant, report_id)
        if report is None:
            return
        now = await orders.status_of(conn, tenant, report["order_id"])
        if now is None or now["status"] != Status.PROCESSING:
            return  # delivered already, cancelled, or failed meanwhile
        studies = await orders.studies_of(conn, report["order_id"])
    ctx = Context(tenant, report, studies, pool, store, settings)
    instances: list[dict[str, str]] = []
    failures: list[str] = []
    for delivery in DELIVERIES:
        done = await delivery(ctx)
        instances += done.instances
        failures += done.failures
    async with transaction(pool) as conn:
        await reports.set_instances(conn, report_id, instances)
        action = Action.DELIVERY_FAIL if failures else Action.DELIVER
        detail = "; ".join(failures)[:1000] if failures else None
        m = await orders.transition(
            conn, tenant, report["order_id"], action, ACTOR, detail=detail, expect=Status.PROCESSING
        )
        if m is not None:
            await events.append(conn, [order_moved(m, ACTOR)])
