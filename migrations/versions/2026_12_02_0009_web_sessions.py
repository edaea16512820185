"""web console sessions; an index of uploaders' submissions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:00:00.000000

Lock safety: a new table, and an index built CONCURRENTLY on PostgreSQL (submissions stays writable).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


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
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_submissions_tenant_uploader",
                "submissions",
                ["tenant_id", "uploader_id", "created_at"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("ix_submissions_tenant_uploader", "submissions", ["tenant_id", "uploader_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_submissions_tenant_uploader", table_name="submissions")
    op.drop_index("ix_web_sessions_key", table_name="web_sessions")
    op.drop_table("web_sessions")
