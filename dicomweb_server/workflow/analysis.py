"""The analysis service's claims of pending orders (issue #12 §3): claim, heartbeat, complete,
fail, and the lease's expiry.

A claim is one transaction: the next pending order (urgent first, then oldest, ``FOR UPDATE
SKIP LOCKED``), its CLAIM move with its history row and event, the order's attempts + 1, the
job row with its lease, and a ``job.expire`` step queued for the lease's end.  That step (and
the reconciler, for a job whose step was lost) ends a lapsed claim: the order goes back to
pending while attempts are left, else it fails with reason ``analysis``.  A heartbeat moves
the lease's end; the step finding the lease not yet over runs again when it is (``Later``).
Only the client that claimed a job can touch it; anyone else is told it does not exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from dicomweb_server import events
from dicomweb_server.db import analysis_jobs, arrival, orders
from dicomweb_server.db import reports as reports_db
from dicomweb_server.db.analysis_jobs import Job
from dicomweb_server.db.pool import Connection, Pool, connection, transaction
from dicomweb_server.errors import Conflict, NotFound
from dicomweb_server.jobs.queue import Later, enqueue
from dicomweb_server.lifecycle import Action, Status
from dicomweb_server.settings import WorkflowSettings
from dicomweb_server.workflow import delivery
from dicomweb_server.workflow.stability import order_moved

EXPIRE_STEP = "job.expire"
POLL_SECONDS = 0.2  # how often a long-polling claim looks for a pending order
MAX_WAIT = 30.0


@dataclass(frozen=True)
class Claimed:
    job_id: str
    order_id: str
    tenant: str
    priority: str
    attempt: int
    lease_expires_at: datetime
    studies: list[str]


async def claim(
    pool: Pool,
    workflow: WorkflowSettings,
    worker: str,
    client_id: str,
    actor: str,
    wait: float,
    gone: Callable[[], Awaitable[bool]] | None = None,
) -> Claimed | None:
    """The next pending order, claimed; waiting up to ``wait`` seconds for one (a long poll).

    ``gone`` is asked before each look after the first: a worker that went away during its
    long poll must not be handed an order (it would sit in processing, held by nobody, until
    its lease ran out, and cost an attempt)."""
    deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
    first = True
    while True:
        if not first and gone is not None and await gone():
            return None
        first = False
        claimed = await _claim_one(pool, workflow, worker, client_id, actor)
        left = deadline - time.monotonic()
        if claimed is not None or left <= 0:
            return claimed
        await asyncio.sleep(min(POLL_SECONDS, left))


async def _claim_one(
    pool: Pool, workflow: WorkflowSettings, worker: str, client_id: str, actor: str
) -> Claimed | None:
    async with transaction(pool) as conn:
        found = await analysis_jobs.next_pending(conn)
        if found is None:
            return None
        order_id, tenant, priority = found
        moved = await orders.transition(conn, tenant, order_id, Action.CLAIM, actor, expect=Status.PENDING)
        if moved is None:  # cannot happen while the row is locked; nothing to claim then
            return None
        lease = float((await arrival.tenant_settings(conn, tenant, workflow))["lease"])
        job_id, attempt, until = await analysis_jobs.start(conn, order_id, tenant, worker, client_id, lease)
        await events.append(conn, [order_moved(moved, actor)])
        payload = {"tenant": tenant, "job": job_id}
        await enqueue(conn, EXPIRE_STEP, payload, key=f"{EXPIRE_STEP}:{job_id}", after=lease)
        studies = await orders.studies_of(conn, order_id)
    return Claimed(job_id, order_id, tenant, priority, attempt, until, studies)


def _owned(job: Job | None, job_id: str, client_id: str) -> Job:
    """The job if this client claimed it; another client's job is as good as unknown (404)."""
    if job is None or job.client_id != client_id:
        raise NotFound(f"No analysis job {job_id}")
    return job


def _held(job: Job) -> None:
    """409 unless the claim is still held: active, its lease running, its order processing."""
    if job.state != "active":
        state = job.state
    elif not job.live:
        state = "expired"
    elif job.order_status != Status.PROCESSING.value:
        state = "withdrawn"  # the order moved on under the claim (cancelled)
    else:
        return
    raise Conflict(f"The lease of job {job.id} is lost ({state})", fields={"job_state": state})


async def heartbeat(
    pool: Pool, workflow: WorkflowSettings, job_id: str, client_id: str
) -> tuple[Job, datetime, list[str]]:
    """The lease runs its full length again from now; 409 when it is lost."""
    async with transaction(pool) as conn:
        job = _owned(await analysis_jobs.find(conn, job_id, lock=True), job_id, client_id)
        _held(job)
        lease = float((await arrival.tenant_settings(conn, job.tenant, workflow))["lease"])
        until = await analysis_jobs.extend(conn, job_id, lease)
        if until is None:
            raise Conflict(f"The lease of job {job_id} is lost (expired)", fields={"job_state": "expired"})
        studies = await orders.studies_of(conn, job.order_id)
    return job, until, studies


async def open_job(pool: Pool, job_id: str, client_id: str) -> Job:
    """The job a completion is for, before its body is read: completed (answer again) or held."""
    async with connection(pool) as conn:
        job = _owned(await analysis_jobs.find(conn, job_id), job_id, client_id)
    if job.state != "completed":
        _held(job)
    return job


async def complete(
    pool: Pool,
    job_id: str,
    client_id: str,
    actor: str,
    pdf: reports_db.StoredObject,
    json: reports_db.StoredObject,
    csv: reports_db.StoredObject | None,
) -> tuple[dict[str, Any], bool]:
    """The report row, the job completed, ``report.ready`` and the delivery step, in one
    transaction.  (answer, stored): not stored when a concurrent completion won (its answer)."""
    async with transaction(pool) as conn:
        job = _owned(await analysis_jobs.find(conn, job_id, lock=True), job_id, client_id)
        if job.state == "completed" and job.result is not None:
            return job.result, False
        _held(job)
        report_id, _ = await reports_db.create(conn, job.tenant, job.order_id, job_id, pdf, json, csv)
        answer = {"job_id": job_id, "order_id": job.order_id, "report_id": report_id, "status": "completed"}
        await analysis_jobs.finish(conn, job_id, "completed", result=orjson.dumps(answer).decode())
        data = {"order_id": job.order_id, "report_id": report_id}
        await events.append(conn, [events.Change(job.tenant, events.REPORT_READY, job.order_id, data)])
        payload = {"tenant": job.tenant, "report": report_id}
        await enqueue(conn, delivery.DELIVER_STEP, payload, key=delivery.deliver_key(report_id))
    return answer, True


async def fail(
    pool: Pool,
    workflow: WorkflowSettings,
    job_id: str,
    client_id: str,
    actor: str,
    reason: str,
    retryable: bool,
) -> tuple[Job, Status]:
    """The worker gives up: the job failed; the order pending again (retryable, attempts left)
    or failed with reason ``analysis``."""
    async with transaction(pool) as conn:
        job = _owned(await analysis_jobs.find(conn, job_id, lock=True), job_id, client_id)
        _held(job)
        await analysis_jobs.finish(conn, job_id, "failed", reason=reason)
        target = await _end_attempt(conn, workflow, job, actor, "worker_failed", retryable)
    return job, target


async def _end_attempt(
    conn: Connection, workflow: WorkflowSettings, job: Job, actor: str, detail: str, retry: bool
) -> Status:
    """RELEASE while attempts are left (and a retry makes sense), else ANALYSIS_FAIL."""
    limit = int((await arrival.tenant_settings(conn, job.tenant, workflow))["max_attempts"])
    order = await orders.status_of(conn, job.tenant, job.order_id)
    attempts = int(order["attempts"]) if order else limit
    action = Action.RELEASE if retry and attempts < limit else Action.ANALYSIS_FAIL
    moved = await orders.transition(conn, job.tenant, job.order_id, action, actor, detail, Status.PROCESSING)
    if moved is None:
        return Status(order["status"]) if order else Status.FAILED
    await events.append(conn, [order_moved(moved, actor)])
    return moved.target


async def expire(pool: Pool, workflow: WorkflowSettings, payload: dict[str, Any]) -> None:
    """The queued ``job.expire`` step: a lapsed claim ends (the order pending again while attempts
    are left, else failed), a claim whose lease a heartbeat moved is looked at again then."""
    async with transaction(pool) as conn:
        job = await analysis_jobs.find(conn, payload["job"], lock=True)
        if job is None or job.state != "active":
            return  # completed, failed or already expired: nothing to do
        if job.lease_left > 0:
            raise Later(job.lease_left)
        await analysis_jobs.finish(conn, job.id, "expired", reason="lease expired")
        if job.order_status == Status.PROCESSING.value:
            await _end_attempt(conn, workflow, job, "lifecycle", "lease_expired", retry=True)
