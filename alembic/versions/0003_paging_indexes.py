"""Indexes that give QIDO's order (the primary key) together with the tenant and common filters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

A page is ``WHERE tenant = $1 [AND modality = $2] ORDER BY pk LIMIT n``.  With these
indexes that is one ordered index range whatever the planner's statistics say; without
them, right after a bulk ingest (no ANALYZE yet) the planner was seen to sort a bitmap
scan of an unrelated index.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX study_tenant_pk_idx ON study (tenant, pk)")
    op.execute("CREATE INDEX series_tenant_pk_idx ON series (tenant, pk)")
    op.execute("CREATE INDEX instance_tenant_pk_idx ON instance (tenant, pk)")
    op.execute("DROP INDEX series_modality_idx")
    op.execute("CREATE INDEX series_modality_idx ON series (tenant, modality, pk)")


def downgrade() -> None:
    op.execute("DROP INDEX series_modality_idx")
    op.execute("CREATE INDEX series_modality_idx ON series (tenant, modality)")
    for name in ("study_tenant_pk_idx", "series_tenant_pk_idx", "instance_tenant_pk_idx"):
        op.execute(f"DROP INDEX {name}")
