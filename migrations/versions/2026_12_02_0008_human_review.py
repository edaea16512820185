"""human review: task kinds, leases, SLA; appeals, golden items, media reveals

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:00:00.000000

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. The columns added here are nullable
or carry a constant default (PostgreSQL 11+ adds those without rewriting the table); the backfill
touches review_tasks only, which is small next to submissions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_FALSE = sa.text("false")


def upgrade() -> None:
    with op.batch_alter_table("review_tasks") as t:
        t.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="review"))
        t.add_column(sa.Column("restricted", sa.Boolean(), nullable=False, server_default=_FALSE))
        t.add_column(sa.Column("graphic", sa.Boolean(), nullable=False, server_default=_FALSE))
        t.add_column(sa.Column("category", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("policy_id", sa.String(length=64), nullable=True))
        t.add_column(sa.Column("appeal_id", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("golden", sa.Boolean(), nullable=False, server_default=_FALSE))
        t.add_column(sa.Column("claim_token_hash", sa.String(length=64), nullable=True))
        t.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("breached", sa.Boolean(), nullable=False, server_default=_FALSE))
        t.add_column(sa.Column("decided_by", sa.String(length=64), nullable=True))
        t.create_index("ix_review_tasks_next", ["tenant_id", "status", "priority", "due_at"])
    op.execute("UPDATE review_tasks SET kind = 'qa' WHERE queue = 'qa'")
    op.execute("UPDATE review_tasks SET restricted = true WHERE queue = 'restricted'")
    # Tasks opened before this revision: their policy (the category stays unknown: the case view
    # reads it from the findings).
    op.execute(
        "UPDATE review_tasks SET policy_id = "
        "(SELECT policy_id FROM submissions WHERE submissions.id = review_tasks.submission_id) "
        "WHERE policy_id IS NULL"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE review_tasks SET due_at = created_at + interval '1 day' WHERE due_at IS NULL")
    else:
        op.execute("UPDATE review_tasks SET due_at = datetime(created_at, '+1 day') WHERE due_at IS NULL")

    op.create_table(
        "appeals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("decision_id", sa.BigInteger(), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("appellant_id", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("task_id", sa.String(length=32), nullable=True),
        sa.Column("filed_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_appeals_submission", "appeals", ["submission_id"])
    op.create_index(
        "uq_appeals_open_per_submission",
        "appeals",
        ["submission_id"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
        sqlite_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "golden_items",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("expected_action", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"]),
        sa.PrimaryKeyConstraint("tenant_id", "submission_id"),
    )
    op.create_table(
        "golden_answers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("moderator", sa.String(length=64), nullable=False),
        sa.Column("expected_action", sa.String(length=16), nullable=False),
        sa.Column("given_action", sa.String(length=16), nullable=False),
        sa.Column("agreed", sa.Boolean(), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", name="uq_golden_answers_task_id"),
    )
    op.create_index("ix_golden_answers_moderator", "golden_answers", ["tenant_id", "moderator"])
    op.create_table(
        "media_reveals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("moderator", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("graphic", sa.Boolean(), nullable=False),
        sa.Column("revealed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_media_reveals_moderator_time", "media_reveals", ["tenant_id", "moderator", "revealed_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moderation_app') THEN
                    -- Default privileges (0005) granted read and write; evidence is kept.
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE ON appeals, golden_answers TO moderation_app';
                    EXECUTE 'REVOKE DELETE, TRUNCATE ON appeals, golden_answers FROM moderation_app';
                    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON golden_items TO moderation_app';
                    EXECUTE 'GRANT SELECT, INSERT ON media_reveals TO moderation_app';
                    EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON media_reveals FROM moderation_app';
                END IF;
            END $$;
            """
        )


def downgrade() -> None:
    op.drop_index("ix_media_reveals_moderator_time", table_name="media_reveals")
    op.drop_table("media_reveals")
    op.drop_index("ix_golden_answers_moderator", table_name="golden_answers")
    op.drop_table("golden_answers")
    op.drop_table("golden_items")
    op.drop_index("uq_appeals_open_per_submission", table_name="appeals")
    op.drop_index("ix_appeals_submission", table_name="appeals")
    op.drop_table("appeals")
    with op.batch_alter_table("review_tasks") as t:
        t.drop_index("ix_review_tasks_next")
        for column in (
            "decided_by",
            "breached",
            "due_at",
            "claimed_at",
            "claim_token_hash",
            "golden",
            "appeal_id",
            "policy_id",
            "category",
            "graphic",
            "restricted",
            "kind",
        ):
            t.drop_column(column)
