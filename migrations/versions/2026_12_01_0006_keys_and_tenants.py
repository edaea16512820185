"""keys and tenants: last use, revocation, allowed policies

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00.000000

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. Prefer nullable columns, backfill
in batches, and op.create_index(..., postgresql_concurrently=True) inside
op.get_context().autocommit_block().
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Two nullable columns (no default, no rewrite) and a new table: nothing in use is locked for
# longer than the catalogue update. NULL allowed_policies keeps existing tenants as they were
# (every shipped policy allowed).


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_policies", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "access_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_epoch")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moderation_app') THEN
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE ON access_epoch TO moderation_app';
                END IF;
            END
            $$;
            """
        )


def downgrade() -> None:
    op.drop_table("access_epoch")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("allowed_policies")
