"""per-tenant blob references, queue-side ingest accounts, worker progress

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 00:00:00.000000

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. Prefer nullable columns, backfill
in batches, and op.create_index(..., postgresql_concurrently=True) inside
op.get_context().autocommit_block().
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_accounts",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("secret", sa.String(length=80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("account"),
    )
    op.create_index("ix_ingest_accounts_tenant_id", "ingest_accounts", ["tenant_id"])
    op.create_table(
        "worker_progress",
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.String(length=500), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moderation_app') THEN
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE ON ingest_accounts TO moderation_app';
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON worker_progress TO moderation_app';
                END IF;
            END $$;
            """
        )
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_submissions_tenant_sha256",
                "submissions",
                ["tenant_id", "sha256"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("ix_submissions_tenant_sha256", "submissions", ["tenant_id", "sha256"])


def downgrade() -> None:
    op.drop_table("worker_progress")
    op.drop_index("ix_ingest_accounts_tenant_id", table_name="ingest_accounts")
    op.drop_table("ingest_accounts")
    op.drop_index("ix_submissions_tenant_sha256", table_name="submissions")
