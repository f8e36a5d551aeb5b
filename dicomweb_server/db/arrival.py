"""SQL of each study's arrival row (alembic 0009): recorded in every instance's transaction,
claimed when due, made stable by the quiet period, a commit or the force-complete limit.

The row is the truth about a study's completeness (WORKFLOW.md, "Knowing that a study is
complete"): nothing about it lives in memory, so a server restarted during a quiet period
still makes the study stable on time (the settle step is queued with the row and re-queued by
the reconciler).  Readers of due rows use the partial index on ``due_at``: the cost does not
grow with the number of studies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from dicomweb_server.db.pool import Connection, require_transaction
from dicomweb_server.lifecycle import Status
from dicomweb_server.settings import WorkflowSettings

DIGEST_BITS = 128


def uid_digest(sop_uids: Sequence[str]) -> int:
    """The order-independent digest of a set of SOP Instance UIDs: the XOR of each UID's
    SHA-256 prefix (a set digest: any order of arrival gives the same value)."""
    value = 0
    for uid in sop_uids:
        value ^= int.from_bytes(hashlib.sha256(uid.encode()).digest()[: DIGEST_BITS // 8], "big")
    return value


def _bits(value: int) -> str:
    return format(value, f"0{DIGEST_BITS}b")


@dataclass(frozen=True)
class Arrived:
    """What one transaction adds to a study: instances new to the index, their bytes and digest."""

    study_uid: str
    instances: int
    bytes: int
    digest: int


@dataclass(frozen=True)
class Recorded:
    """A study's row after ``record``: what changed, for the caller's events and queue entry."""

    study_uid: str
    received: bool  # its first instances: ``study.received``
    regressed: bool  # it was stable and goes back to unstable
    late: int  # instances that arrived after its order began processing
    added: int
    due_at: datetime | None
    state: str


# A tenant's effective workflow settings: its overrides, else the server's defaults ($2..$7).
TENANT_SETTINGS = (
    "SELECT coalesce(t.quiet_seconds, $2) AS quiet, coalesce(t.force_seconds, $3) AS force, "
    "coalesce(t.force_policy, $4) AS force_policy, coalesce(t.auto_orders, $5) AS auto_orders, "
    "coalesce(t.max_attempts, $6) AS max_attempts, coalesce(t.lease_seconds, $7) AS lease "
    "FROM (SELECT 1) one LEFT JOIN tenant t ON t.id = $1"
)


def defaults_args(d: WorkflowSettings) -> tuple[Any, ...]:
    """The server's defaults, as TENANT_SETTINGS's parameters $2..$7."""
    return (d.quiet_seconds, d.force_seconds, d.force_policy, d.auto_orders, d.max_attempts, d.lease_seconds)


async def tenant_settings(conn: Connection, tenant: str, defaults: WorkflowSettings) -> dict[str, Any]:
    row = await conn.fetchrow(TENANT_SETTINGS, tenant, *defaults_args(defaults))
    assert row is not None  # one row, from (SELECT 1)
    return dict(row)


async def open_studies(conn: Connection, tenant: str, studies: Sequence[str], seconds: float) -> None:
    """A request or association starts carrying ``studies``: they are ``receiving`` until it ends
    (``record(closing=...)``) or, if its process dies, for at most ``seconds``.

    Committed without waiting for the WAL flush (``synchronous_commit = off``): the mark matters
    only while its session lives, and a crash that loses it ends the session too; so it costs no
    disk flush on the request path."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO OFF")
        await _open(conn, tenant, studies, seconds)


async def _open(conn: Connection, tenant: str, studies: Sequence[str], seconds: float) -> None:
    await conn.execute(
        "INSERT INTO arrival AS a (tenant, study_uid, open_sessions, open_until) "
        "SELECT $1, s, 1, now() + make_interval(secs => $3) FROM unnest($2::text[]) AS s ORDER BY s "
        "ON CONFLICT (tenant, study_uid) DO UPDATE SET open_sessions = a.open_sessions + 1, "
        "open_until = greatest(a.open_until, EXCLUDED.open_until)",
        tenant,
        sorted(set(studies)),
        seconds,
    )


async def close_studies(conn: Connection, tenant: str, studies: Sequence[str]) -> None:
    """A session that stored nothing ends (it failed or was cancelled): no longer receiving
    (not flushed either: if lost, ``open_until`` ends the mark)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO OFF")
        await _close(conn, tenant, studies)


async def _close(conn: Connection, tenant: str, studies: Sequence[str]) -> None:
    await conn.execute(
        "UPDATE arrival SET open_sessions = greatest(0, open_sessions - 1) "
        "WHERE tenant = $1 AND study_uid = ANY($2::text[])",
        tenant,
        sorted(set(studies)),
    )
    await conn.execute(
        "DELETE FROM arrival WHERE tenant = $1 AND study_uid = ANY($2::text[]) "
        "AND instances = 0 AND open_sessions = 0",
        tenant,
        sorted(set(studies)),
    )


# Each row's new values are worked out by ``record`` from the locked rows and carried in the
# VALUES the insert would use: EXCLUDED holds them for the update.  ``open_sessions`` carries the
# sessions closing, ``late_instances`` the instances that came late, ``due_at`` the new due time
# (NULL: the timer is left as it is), ``first_at`` the study's first arrival.
_RECORD = (
    "WITH t AS (" + TENANT_SETTINGS + ") "
    "INSERT INTO arrival AS a (tenant, study_uid, instances, bytes, digest, channels, aes, "
    " first_at, last_at, due_at, state, open_sessions, late_instances) "
    "SELECT $1, v.s, v.n, v.b, v.d::bit(128), $8::text[], $9::text[], coalesce(v.first, now()), now(), "
    " CASE WHEN v.rearm THEN least(now() + make_interval(secs => t.quiet), "
    "  coalesce(v.first, now()) + make_interval(secs => t.force)) END, v.state, v.closing, v.late "
    "FROM unnest($10::text[], $11::int[], $12::bigint[], $13::text[], $14::timestamptz[], "
    " $15::boolean[], $16::text[], $17::int[], $18::int[]) "
    " AS v(s, n, b, d, first, rearm, state, closing, late) CROSS JOIN t ORDER BY v.s "
    "ON CONFLICT (tenant, study_uid) DO UPDATE SET "
    " instances = a.instances + EXCLUDED.instances, bytes = a.bytes + EXCLUDED.bytes, "
    " digest = a.digest # EXCLUDED.digest, "
    " channels = ARRAY(SELECT DISTINCT c FROM unnest(a.channels || EXCLUDED.channels) c ORDER BY c), "
    " aes = ARRAY(SELECT DISTINCT c FROM unnest(a.aes || EXCLUDED.aes) c ORDER BY c), "
    " first_at = EXCLUDED.first_at, "
    " last_at = CASE WHEN EXCLUDED.instances > 0 THEN now() ELSE a.last_at END, "
    " due_at = coalesce(EXCLUDED.due_at, a.due_at), "
    " state = EXCLUDED.state, "
    " stable_at = CASE WHEN EXCLUDED.state = 'stable' THEN a.stable_at END, "
    " open_sessions = greatest(0, a.open_sessions - EXCLUDED.open_sessions), "
    " late_instances = a.late_instances + EXCLUDED.late_instances "
    "RETURNING study_uid, state, due_at"
)


async def record(
    conn: Connection,
    tenant: str,
    arrived: Sequence[Arrived],
    closing: Sequence[str],
    channel: str,
    ae: str | None,
    defaults: WorkflowSettings,
) -> list[Recorded]:
    """Add what one ingest transaction stored to each study's row, in that transaction.

    ``closing``: the studies this session had opened (``open_studies``), now no longer carried by
    it.  A stable study that gets new instances goes back to ``unstable`` unless an order of it
    has begun processing; then the instances are counted as late and the study stays stable.
    New instances of an unstable study restart its quiet period; a held study stays held.
    """
    require_transaction(conn)
    by_study = {a.study_uid: a for a in arrived}
    studies = sorted(set(by_study) | set(closing))
    if not studies:
        return []
    before = {
        r["study_uid"]: r
        for r in await conn.fetch(
            "SELECT study_uid, state, instances, first_at FROM arrival "
            "WHERE tenant = $1 AND study_uid = ANY($2::text[]) ORDER BY study_uid FOR UPDATE",
            tenant,
            studies,
        )
    }
    started = {
        r["study_uid"]
        for r in await conn.fetch(
            "SELECT DISTINCT os.study_uid FROM order_study os JOIN orders o ON o.id = os.order_id "
            "WHERE os.tenant = $1 AND os.study_uid = ANY($2::text[]) "
            "AND o.status = ANY($3::text[])",
            tenant,
            studies,
            [Status.PROCESSING.value, Status.DELIVERED.value],
        )
    }
    none = Arrived("", 0, 0, 0)
    out: list[Recorded] = []
    firsts, states, rearms, closings, lates = [], [], [], [], []
    for s in studies:
        old = before.get(s)
        added = by_study.get(s, none).instances
        was = old["state"] if old is not None else "unstable"
        late = added if was == "stable" and s in started else 0
        state = "unstable" if was == "stable" and added and not late else was
        firsts.append(old["first_at"] if old is not None and old["instances"] else None)
        states.append(state)
        rearms.append(added > 0 and state == "unstable")
        closings.append(1 if s in closing and old is not None else 0)
        lates.append(late)
        received = added > 0 and (old is None or old["instances"] == 0)
        out.append(Recorded(s, received, was == "stable" and state == "unstable", late, added, None, state))
    rows = await conn.fetch(
        _RECORD,
        tenant,
        *defaults_args(defaults),
        [channel],
        [ae] if ae else [],
        studies,
        [by_study.get(s, none).instances for s in studies],
        [by_study.get(s, none).bytes for s in studies],
        [_bits(by_study.get(s, none).digest) for s in studies],
        firsts,
        rearms,
        states,
        closings,
        lates,
    )
    due = {r["study_uid"]: r["due_at"] for r in rows}
    return [replace(r, due_at=due[r.study_uid]) for r in out]


@dataclass(frozen=True)
class Due:
    """A study's row as the settle step sees it, locked."""

    study_uid: str
    state: str
    instances: int
    receiving: bool
    due_in: float | None  # seconds until due (<= 0: due now); None: no timer
    forced: bool  # the force-complete limit, not the quiet period, made it due
    digest: str
    force_policy: str
    auto_orders: bool


async def lock(conn: Connection, tenant: str, study: str, defaults: WorkflowSettings) -> Due | None:
    """The study's row, locked for this transaction; None when it is gone or another step holds it."""
    require_transaction(conn)
    row = await conn.fetchrow(
        "WITH t AS (" + TENANT_SETTINGS + ") "
        "SELECT a.study_uid, a.state, a.instances, "
        " (a.open_sessions > 0 AND a.open_until > now()) AS receiving, "
        " extract(epoch FROM a.due_at - now())::float8 AS due_in, "
        " (a.first_at + make_interval(secs => t.force) <= "
        "  a.last_at + make_interval(secs => t.quiet)) AS forced, "
        " a.digest::text AS digest, t.force_policy, t.auto_orders "
        "FROM arrival a CROSS JOIN t WHERE a.tenant = $1 AND a.study_uid = $8 FOR UPDATE OF a SKIP LOCKED",
        tenant,
        *defaults_args(defaults),
        study,
    )
    return None if row is None else Due(**dict(row))


async def make_stable(conn: Connection, tenant: str, study: str, by: str, held: bool = False) -> bool:
    """unstable → stable (or held), by ``quiet``, ``commit`` or ``force``; a compare-and-set."""
    status = await conn.execute(
        "UPDATE arrival SET state = $3, stable_at = CASE WHEN $3 = 'stable' THEN now() END, "
        "stable_by = $4, due_at = NULL WHERE tenant = $1 AND study_uid = $2 "
        "AND state IN ('unstable', 'held') AND ($3 = 'stable' OR state = 'unstable')",
        tenant,
        study,
        "held" if held else "stable",
        by,
    )
    return bool(status.endswith(" 1"))


async def counts(conn: Connection, tenant: str, study: str, lock: bool = False) -> dict[str, Any] | None:
    """What arrived of a study (for a commit's expected counts and the status answer); with
    ``lock``, its row is locked for the caller's transaction."""
    row = await conn.fetchrow(
        "SELECT a.state, a.instances, a.bytes, a.first_at, a.last_at, a.channels, a.aes, a.stable_at, "
        "a.stable_by, a.late_instances, a.due_at, a.digest::text AS digest, "
        "a.expected_instances, a.expected_series, "
        "(a.open_sessions > 0 AND a.open_until > now()) AS receiving, "
        "coalesce(s.num_series, 0) AS series, coalesce(s.num_instances, 0) AS indexed "
        "FROM arrival a LEFT JOIN study s ON s.tenant = a.tenant AND s.study_uid = a.study_uid "
        "WHERE a.tenant = $1 AND a.study_uid = $2" + (" FOR UPDATE OF a" if lock else ""),
        tenant,
        study,
    )
    return None if row is None else dict(row)


async def forget(conn: Connection, tenant: str, study: str, sop_uids: Sequence[str], size: int) -> None:
    """Deleted instances leave the study's arrival row (counts, bytes, digest), in the delete's
    transaction; a study deleted whole loses its row (a copy sent later arrives afresh)."""
    await conn.execute(
        "UPDATE arrival SET instances = greatest(0, instances - $3), bytes = greatest(0, bytes - $4), "
        "digest = digest # $5::text::bit(128) WHERE tenant = $1 AND study_uid = $2",
        tenant,
        study,
        len(sop_uids),
        size,
        _bits(uid_digest(sop_uids)),
    )
    await conn.execute(
        "DELETE FROM arrival a WHERE a.tenant = $1 AND a.study_uid = $2 AND a.open_sessions = 0 "
        "AND NOT EXISTS (SELECT 1 FROM study s WHERE s.tenant = a.tenant AND s.study_uid = a.study_uid)",
        tenant,
        study,
    )


async def expect(
    conn: Connection, tenant: str, study: str, instances: int | None, series: int | None
) -> None:
    """Keep a commit's expected counts: QC checks the study still has them."""
    await conn.execute(
        "UPDATE arrival SET expected_instances = coalesce($3, expected_instances), "
        "expected_series = coalesce($4, expected_series) WHERE tenant = $1 AND study_uid = $2",
        tenant,
        study,
        instances,
        series,
    )


async def overdue(conn: Connection, grace_seconds: float, limit: int) -> list[tuple[str, str]]:
    """(tenant, study) of unstable rows due more than ``grace_seconds`` ago (the reconciler's)."""
    rows = await conn.fetch(
        "SELECT tenant, study_uid FROM arrival WHERE state = 'unstable' "
        "AND due_at < now() - make_interval(secs => $1) ORDER BY due_at LIMIT $2",
        grace_seconds,
        limit,
    )
    return [(r["tenant"], r["study_uid"]) for r in rows]
