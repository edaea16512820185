"""per-tenant callback receivers: plain-HTTP and private allow-list, own secrets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00.000000

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. Prefer nullable columns, backfill
in batches, and op.create_index(..., postgresql_concurrently=True) inside
op.get_context().autocommit_block().
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
