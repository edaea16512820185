"""the ledger of statements of reasons sent to the DSA Transparency Database; decisions by time

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 00:00:00.000000

Lock safety: a new table, and an index built CONCURRENTLY on PostgreSQL (decisions stays writable).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dsa_ledger",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("puid", sa.String(length=500), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("decision_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "puid"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moderation_app') THEN
                    -- A record of what the regulator holds: written once, never removed.
                    EXECUTE 'GRANT SELECT, INSERT ON dsa_ledger TO moderation_app';
                    EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON dsa_ledger FROM moderation_app';
                END IF;
            END $$;
            """
        )
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_decisions_decided_at", "decisions", ["decided_at"], postgresql_concurrently=True, if_not_exists=True
            )
    else:
        op.create_index("ix_decisions_decided_at", "decisions", ["decided_at"])


def downgrade() -> None:
    op.drop_index("ix_decisions_decided_at", table_name="decisions")
    op.drop_table("dsa_ledger")
