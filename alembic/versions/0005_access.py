"""Tenants, OAuth2 clients with hashed secrets, and the append-only audit trail.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

A tenant id is also the first segment of its object keys, hence its pattern.
A client has at most two active secrets (during a rotation, the old one
expires after an overlap).  Audit rows follow PS3.15 A.5 event types; a
trigger refuses UPDATE, DELETE and TRUNCATE so the trail is append-only.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE tenant ("
        " id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),"
        " name text NOT NULL,"
        " disabled boolean NOT NULL DEFAULT false,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE TABLE client ("
        " client_id text PRIMARY KEY CHECK (client_id ~ '^[A-Za-z0-9._-]{1,64}$'),"
        " tenant text NOT NULL REFERENCES tenant (id),"
        " name text NOT NULL,"
        " scopes text[] NOT NULL,"
        " rate_requests integer,"
        " rate_bytes bigint,"
        " disabled boolean NOT NULL DEFAULT false,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE TABLE client_secret ("
        " pk bigserial PRIMARY KEY,"
        " client_id text NOT NULL REFERENCES client ON DELETE CASCADE,"
        " hash text NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " expires_at timestamptz)"
    )
    op.execute("CREATE INDEX client_secret_client_idx ON client_secret (client_id)")
    op.execute(
        "CREATE TABLE audit ("
        " pk bigserial PRIMARY KEY,"
        " at timestamptz NOT NULL,"
        " tenant text,"
        " client_id text,"
        " event_id integer NOT NULL,"
        " event text NOT NULL,"
        " action char(1) NOT NULL,"
        " transaction text NOT NULL,"
        " study_uid text,"
        " status integer NOT NULL,"
        " outcome integer NOT NULL,"
        " request_id text NOT NULL)"
    )
    op.execute("CREATE INDEX audit_tenant_idx ON audit (tenant, pk)")
    op.execute(
        "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit")
    op.execute("DROP FUNCTION audit_append_only")
    op.execute("DROP TABLE client_secret")
    op.execute("DROP TABLE client")
    op.execute("DROP TABLE tenant")
