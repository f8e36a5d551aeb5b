"""The event outbox: one row per change, written in the transaction that made it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10

Like Microsoft's DICOM change feed (``UpdateInstanceStatus`` writes the feed row in the
instance's transaction), an ``instance.stored`` row commits with its instance row or not at
all: a reader never sees an event for a change that rolled back.  Readers (the statistics
keeper now; webhooks and the lifecycle later) keep a cursor, the last id they handled, and
read the rows after it in id order.  ``tenant`` is the row's owner; ``payload`` the kind's
own JSON document (events/outbox.py).
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE event (
            id         bigserial PRIMARY KEY,
            tenant     text NOT NULL,
            kind       text NOT NULL CHECK (kind ~ '^[a-z]+(\\.[a-z_]+)+$'),
            payload    jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Readers of one kind ask for the rows after their cursor: (kind, id) serves them; the
    # primary key serves the readers of every kind.
    op.execute("CREATE INDEX event_kind_id ON event (kind, id)")


def downgrade() -> None:
    op.execute("DROP TABLE event")
