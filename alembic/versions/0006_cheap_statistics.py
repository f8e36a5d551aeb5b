"""Keep ANALYZE and TOAST cheap for the stored DICOM JSON.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

``instance.metadata``, ``study.attrs`` and ``series.attrs`` are returned, never searched: the
planner needs no statistics on them.  Without this, each ANALYZE after an ingest burst (see
``db.analyze_if_stale``) read and decompressed thousands of large TOASTed documents from the
sample, which showed as a steady share of PostgreSQL's CPU while 9 KB instances streamed in.
Where the server was built with lz4, those columns are compressed with it: several times faster
than the default pglz at a similar ratio for JSON.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (("instance", "metadata"), ("study", "attrs"), ("series", "attrs"))


def upgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS 0")
    lz4 = "\n".join(f"EXECUTE 'ALTER TABLE {t} ALTER COLUMN {c} SET COMPRESSION lz4';" for t, c in _COLUMNS)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF 'lz4' = ANY (SELECT unnest(enumvals) FROM pg_settings
                            WHERE name = 'default_toast_compression') THEN
                {lz4}
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION default")
