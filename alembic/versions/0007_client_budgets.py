"""A client's own rate limits are never negative.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

``ratelimit.Policy`` refuses a negative budget, so a client row with one (the CLI used to
accept ``--rate-requests -5``) made every request of that client fail.  A negative value is
taken to mean "not set" (the server's defaults apply), and the table refuses new ones.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE client SET rate_requests = NULL WHERE rate_requests < 0")
    op.execute("UPDATE client SET rate_bytes = NULL WHERE rate_bytes < 0")
    op.execute(
        "ALTER TABLE client"
        " ADD CONSTRAINT client_rate_requests_check CHECK (rate_requests >= 0),"
        " ADD CONSTRAINT client_rate_bytes_check CHECK (rate_bytes >= 0)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE client"
        " DROP CONSTRAINT client_rate_requests_check,"
        " DROP CONSTRAINT client_rate_bytes_check"
    )
