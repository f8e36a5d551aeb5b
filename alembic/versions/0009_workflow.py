"""The workflow: each study's arrival, orders with their history, analysis jobs, reports, the
tenants' workflow settings, a commit-ordered change feed, and pgqueuer's queue tables.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

- ``arrival``: one row per (tenant, study), written in the transaction of each instance that is
  new to the index (ingest/session.py): counts, bytes, first and last arrival, the channels and
  AE titles it came from, an order-independent digest of its SOP Instance UIDs (the XOR of
  each UID's SHA-256 prefix, so any order of arrival gives the same value) and ``due_at``, when
  it becomes stable unless more arrives.  ``open_sessions``/``open_until`` count the requests
  and associations carrying the study (``receiving``); ``open_until`` bounds a crashed one.
  The partial index on ``due_at`` is what the settle step claims from: it never scans studies.
- ``orders`` (``order`` is a keyword), ``order_study``, ``order_history``: an order over one
  or more studies, its status (workflow/lifecycle.py is the table of allowed moves), and
  every move with its time, reason and actor.  Keyset indexes serve the listing filters.
- ``analysis_job``: one row per claim (a lease); one live claim per order at most.
- ``report``: the objects a worker returned (PDF, JSON, optionally CSV) and the Encapsulated
  PDF instances made from them.
- ``event`` gains ``xid`` (the writing transaction's id, xid8) and ``subject``: the change feed
  reads in (xid, id) order and only below the oldest running transaction (events/feed.py),
  so a transaction that commits late can never slip in behind a reader's cursor.
  ``event_retention`` remembers the newest cursor pruned, for the 410 on older ones.
- The tenant columns are overrides; NULL takes the server's default (settings.py, workflow).
- pgqueuer's own tables, from the pinned pgqueuer's DDL (jobs/queue.py keeps it behind an interface).
"""

import re

from alembic import op


def _each(sql: str) -> None:
    """asyncpg runs one statement per call: ours end with a semicolon and a newline."""
    for statement in re.split(r";\s*\n", sql):
        if statement.strip():
            op.execute(statement)


def _each_pgqueuer(sql: str) -> None:
    """pgqueuer's DDL: statements start a paragraph (function bodies have semicolons)."""
    for statement in re.split(r"\n\n(?=CREATE |DROP )", sql):
        if statement.strip():
            op.execute(statement)

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _each(
        """
        ALTER TABLE tenant
            ADD COLUMN quiet_seconds  double precision CHECK (quiet_seconds >= 0),
            ADD COLUMN force_seconds  double precision CHECK (force_seconds > 0),
            ADD COLUMN force_policy   text CHECK (force_policy IN ('proceed', 'hold', 'fail')),
            ADD COLUMN auto_orders    boolean,
            ADD COLUMN max_attempts   integer CHECK (max_attempts BETWEEN 1 AND 100),
            ADD COLUMN lease_seconds  double precision CHECK (lease_seconds BETWEEN 5 AND 86400);

        CREATE TABLE arrival (
            tenant          text NOT NULL,
            study_uid       text NOT NULL,
            state           text NOT NULL DEFAULT 'unstable' CHECK (state IN ('unstable', 'stable', 'held')),
            instances       integer NOT NULL DEFAULT 0,
            bytes           bigint NOT NULL DEFAULT 0,
            first_at        timestamptz NOT NULL DEFAULT now(),
            last_at         timestamptz NOT NULL DEFAULT now(),
            channels        text[] NOT NULL DEFAULT '{}',
            aes             text[] NOT NULL DEFAULT '{}',
            digest          bit(128) NOT NULL DEFAULT repeat('0', 128)::bit(128),
            open_sessions   integer NOT NULL DEFAULT 0,
            open_until      timestamptz,
            due_at          timestamptz,
            stable_at       timestamptz,
            stable_by       text CHECK (stable_by IN ('quiet', 'commit', 'force')),
            late_instances  integer NOT NULL DEFAULT 0,
            expected_instances integer,
            expected_series integer,
            PRIMARY KEY (tenant, study_uid)
        );
        CREATE INDEX arrival_due_idx ON arrival (due_at) WHERE state = 'unstable';

        CREATE TABLE orders (
            id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant          text NOT NULL,
            status          text NOT NULL,
            reason          text,
            failed_step     text,
            priority        text NOT NULL DEFAULT 'routine' CHECK (priority IN ('routine', 'urgent')),
            external_id     text,
            note            text,
            source          text NOT NULL CHECK (source IN ('auto', 'api')),
            duplicate_of    uuid REFERENCES orders (id),
            digest          bit(128),
            idempotency_key text,
            request_hash    bytea,
            attempts        integer NOT NULL DEFAULT 0,
            qc              jsonb,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            pending_since   timestamptz,
            CONSTRAINT orders_idempotency UNIQUE (tenant, idempotency_key)
        );
        CREATE INDEX orders_created_idx ON orders (tenant, created_at DESC, id DESC);
        CREATE INDEX orders_status_idx ON orders (tenant, status, created_at DESC, id DESC);
        CREATE INDEX orders_external_idx ON orders (tenant, external_id, created_at DESC, id DESC)
            WHERE external_id IS NOT NULL;
        CREATE INDEX orders_pending_idx ON orders ((priority = 'urgent') DESC, pending_since, id)
            WHERE status = 'pending';
        CREATE INDEX orders_step_idx ON orders (status, updated_at)
            WHERE status IN ('stable', 'qc_passed', 'processing');
        CREATE INDEX orders_digest_idx ON orders (tenant, digest) WHERE digest IS NOT NULL;

        CREATE TABLE order_study (
            order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            tenant          text NOT NULL,
            study_uid       text NOT NULL,
            patient_id      text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            late_instances  integer NOT NULL DEFAULT 0,
            PRIMARY KEY (order_id, study_uid)
        );
        CREATE INDEX order_study_study_idx ON order_study (tenant, study_uid);
        CREATE INDEX order_study_patient_idx ON order_study (tenant, patient_id, created_at DESC, order_id DESC);

        CREATE TABLE order_history (
            pk              bigserial PRIMARY KEY,
            order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            status          text NOT NULL,
            reason          text,
            actor           text NOT NULL,
            at              timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX order_history_order_idx ON order_history (order_id, pk);

        CREATE TABLE analysis_job (
            id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            tenant           text NOT NULL,
            attempt          integer NOT NULL,
            worker           text NOT NULL,
            client_id        text NOT NULL,
            state            text NOT NULL DEFAULT 'active'
                             CHECK (state IN ('active', 'completed', 'failed', 'expired', 'withdrawn')),
            claimed_at       timestamptz NOT NULL DEFAULT now(),
            lease_expires_at timestamptz NOT NULL,
            finished_at      timestamptz,
            fail_reason      text,
            result           jsonb
        );
        CREATE UNIQUE INDEX analysis_job_live_idx ON analysis_job (order_id) WHERE state = 'active';
        CREATE INDEX analysis_job_lease_idx ON analysis_job (lease_expires_at) WHERE state = 'active';

        CREATE TABLE report (
            id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant          text NOT NULL,
            order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            job_id          uuid NOT NULL UNIQUE REFERENCES analysis_job (id),
            pdf_key         text NOT NULL,
            pdf_size        bigint NOT NULL,
            pdf_sha256      bytea NOT NULL,
            json_key        text NOT NULL,
            json_size       bigint NOT NULL,
            csv_key         text,
            csv_size        bigint,
            instances       jsonb NOT NULL DEFAULT '[]',
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX report_order_idx ON report (order_id, created_at);
        CREATE INDEX report_created_idx ON report (tenant, created_at, id);

        ALTER TABLE event
            ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            ADD COLUMN subject text;
        CREATE INDEX event_feed_idx ON event (tenant, xid, id);
        CREATE INDEX event_created_idx ON event (created_at);
        CREATE TABLE event_retention (
            one         boolean PRIMARY KEY DEFAULT true CHECK (one),
            pruned_xid  xid8 NOT NULL,
            pruned_id   bigint NOT NULL
        );
        """
    )
    from pgqueuer.adapters.persistence import qb, schema_ddl

    _each_pgqueuer(schema_ddl.render_install(qb.DBSettings(), create_schema=False))


def downgrade() -> None:
    from pgqueuer.adapters.persistence import qb, schema_ddl

    _each(schema_ddl.render_uninstall(qb.DBSettings()) + "\n")
    _each(
        """
        DROP TABLE event_retention;
        DROP INDEX event_created_idx;
        DROP INDEX event_feed_idx;
        ALTER TABLE event DROP COLUMN xid, DROP COLUMN subject;
        DROP TABLE report;
        DROP TABLE analysis_job;
        DROP TABLE order_history;
        DROP TABLE order_study;
        DROP TABLE orders;
        DROP TABLE arrival;
        ALTER TABLE tenant DROP COLUMN quiet_seconds, DROP COLUMN force_seconds,
            DROP COLUMN force_policy, DROP COLUMN auto_orders, DROP COLUMN max_attempts,
            DROP COLUMN lease_seconds;
        """
    )
