"""The QC step: the checks a stable order's studies must pass before analysis.

This issue ships the integrity checks (every instance's object is in the store with the size
and SHA-256 the index recorded when it was acknowledged; a committed study still has the
counts it was committed with).  The QC and routing issue adds clinical rule sets as more
``Check`` functions in ``CHECKS``: each takes the order's context and returns its findings.
The result is kept on the order (``qc``), announced by ``qc.completed``, and an order that
passes goes on: to ``uploading`` when a forward destination is configured (none yet: the
DICOM networking issue adds them), else straight to ``pending``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from dicomweb_server import events
from dicomweb_server.db import orders
from dicomweb_server.db.pool import Pool, connection, transaction
from dicomweb_server.errors import StorageError
from dicomweb_server.events import Change, NewEvent
from dicomweb_server.lifecycle import Action, Status
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.workflow.stability import order_moved

ACTOR = "qc"


@dataclass(frozen=True)
class Context:
    tenant: str
    order_id: str
    studies: list[str]
    pool: Pool
    store: ObjectStore


@dataclass(frozen=True)
class Finding:
    check: str
    passed: bool
    detail: str


Check = Callable[[Context], Awaitable[list[Finding]]]


async def integrity(ctx: Context) -> list[Finding]:
    """Every instance's object present, with its recorded size and SHA-256; commits' counts held."""
    async with connection(ctx.pool) as conn:
        instances = await orders.instances_of(conn, ctx.tenant, ctx.studies)
        expected = await orders.expected_counts(conn, ctx.tenant, ctx.studies)
    bad: list[str] = []
    for sop_uid, key, size, sha256 in instances:
        digest = hashlib.sha256()
        seen = 0
        try:
            async for chunk in ctx.store.read(key):
                digest.update(chunk)
                seen += len(chunk)
        except StorageError:
            bad.append(f"{sop_uid}: object missing")
            continue
        if seen != size or digest.digest() != sha256:
            bad.append(f"{sop_uid}: stored bytes differ from those acknowledged")
    findings = [
        Finding(
            "integrity.objects",
            not bad,
            f"{len(instances)} instances verified" if not bad else "; ".join(bad[:10]),
        )
    ]
    for study, (want_i, want_s, have_i, have_s) in expected.items():
        short = []
        if want_i is not None and have_i < want_i:
            short.append(f"{have_i} of {want_i} instances")
        if want_s is not None and have_s < want_s:
            short.append(f"{have_s} of {want_s} series")
        if short:
            findings.append(Finding("integrity.counts", False, f"study {study}: " + ", ".join(short)))
    if not instances:
        findings.append(Finding("integrity.objects", False, "the order's studies have no instances"))
    return findings


CHECKS: tuple[Check, ...] = (integrity,)


async def run(pool: Pool, store: ObjectStore, payload: dict[str, Any]) -> None:
    """The queued QC step of one order; does nothing unless the order is still ``stable``."""
    tenant, order_id = payload["tenant"], payload["order"]
    async with connection(pool) as conn:
        now = await orders.status_of(conn, tenant, order_id)
        if now is None or now["status"] != Status.STABLE:
            return
        studies = await orders.studies_of(conn, order_id)
    ctx = Context(tenant, order_id, studies, pool, store)
    findings = [f for check in CHECKS for f in await check(ctx)]
    passed = all(f.passed for f in findings)
    result = {
        "passed": passed,
        "checked_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "findings": [f.__dict__ for f in findings],
    }
    async with transaction(pool) as conn:
        action = Action.QC_PASS if passed else Action.QC_FAIL
        m = await orders.transition(conn, tenant, order_id, action, ACTOR, expect=Status.STABLE)
        if m is None:
            return  # moved on meanwhile (cancelled, late instances): this result is not its
        await orders.set_qc(conn, order_id, orjson.dumps(result).decode())
        out: list[NewEvent] = [
            Change(tenant, events.QC_COMPLETED, order_id, {"order_id": order_id, **result}),
            order_moved(m, ACTOR),
        ]
        if passed:
            queued = await orders.transition(conn, tenant, order_id, Action.QUEUE, ACTOR)
            assert queued is not None
            out.append(order_moved(queued, ACTOR))
        await events.append(conn, out)
