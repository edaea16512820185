"""web console sessions; indexes of uploaders' submissions and of who decided what

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:00:00.000000

Lock safety: a new table, and an index built CONCURRENTLY on PostgreSQL (submissions stays writable).
"""

from __future__ import annotations

from contextlib import nullcontext

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


INDEXES = [
    ("ix_submissions_tenant_uploader", "submissions", ["tenant_id", "uploader_id", "created_at"], None),
    ("ix_decisions_reviewer", "decisions", ["reviewer_id"], "reviewer_id IS NOT NULL"),
    ("ix_review_tasks_decided_by", "review_tasks", ["decided_by"], "decided_by IS NOT NULL"),
]


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_web_sessions_key", "web_sessions", ["key_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moderation_app') THEN
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON web_sessions TO moderation_app';
                END IF;
            END $$;
            """
        )
    concurrently = op.get_bind().dialect.name == "postgresql"
    with op.get_context().autocommit_block() if concurrently else nullcontext():
        for name, table, columns, where in INDEXES:
            op.create_index(
                name,
                table,
                columns,
                postgresql_concurrently=concurrently,
                postgresql_where=sa.text(where) if where else None,
                sqlite_where=sa.text(where) if where else None,
                if_not_exists=True,
            )


def downgrade() -> None:
    for name, table, _, _ in INDEXES:
        op.drop_index(name, table_name=table)
    op.drop_index("ix_web_sessions_key", table_name="web_sessions")
    op.drop_table("web_sessions")
