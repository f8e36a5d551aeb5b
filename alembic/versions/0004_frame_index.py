"""Where each instance's frames lie in its object, computed at ingest (see frames.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Native Pixel Data: ``pixel_offset`` and ``pixel_length`` of its value.  Encapsulated
Pixel Data: ``fragments`` holds (offset, length) of each fragment's value, flat, and
``frame_fragments`` the first fragment of each frame.  All NULL when unknown (no
pixel data, deflated, or an offset table that ingest could not resolve); frames of
such instances are served by parsing the stored object.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE instance ADD COLUMN pixel_offset bigint, ADD COLUMN pixel_length bigint, "
        "ADD COLUMN fragments bigint[], ADD COLUMN frame_fragments integer[]"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE instance DROP COLUMN pixel_offset, DROP COLUMN pixel_length, "
        "DROP COLUMN fragments, DROP COLUMN frame_fragments"
    )
