"""Keep index rows narrow: JSON attributes go out of line, so scans and counts touch few pages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

QIDO's "additional results" count and unindexed matches (PN infix wildcards) scan
the study or series rows.  With the DICOM JSON inline a study row is ~1 KB and a
count over 40,000 studies reads 5,600 pages; TOASTing anything past 128 bytes keeps
the scanned rows to their index columns.  Results detoast only the rows of a page.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("study", "series", "instance")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (toast_tuple_target = 128)")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (toast_tuple_target)")
