"""per-tenant callback receivers: plain-HTTP and private allow-list, own secrets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00.000000

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. Prefer nullable columns, backfill
in batches, and op.create_index(..., postgresql_concurrently=True) inside
op.get_context().autocommit_block(). (Here only `tenants` changes: one row per platform, read
by key lookups that the in-process cache absorbs; the columns are added nullable, filled, then
set NOT NULL.)

Every tenant without its own webhook secret gets a distinct random one (there is no shared
deployment secret any more); the receiver rules start strict: https only, no private networks.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_tenants = sa.table(
    "tenants",
    sa.column("id", sa.String),
    sa.column("callback_secret", sa.String),
    sa.column("callback_allow_http", sa.Boolean),
    sa.column("callback_private_networks", sa.JSON),
)


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_allow_http", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("callback_private_networks", sa.JSON(), nullable=True))
    bind = op.get_bind()
    bind.execute(sa.update(_tenants).values(callback_allow_http=False, callback_private_networks=[]))
    without = bind.execute(sa.select(_tenants.c.id).where(_tenants.c.callback_secret.is_(None))).scalars().all()
    for tenant_id in without:  # one secret each: the form of moderation.callbacks.signing.new_secret
        secret = "whsec_" + secrets.token_urlsafe(32)
        bind.execute(sa.update(_tenants).where(_tenants.c.id == tenant_id).values(callback_secret=secret))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.alter_column("callback_secret", existing_type=sa.String(length=80), nullable=False)
        batch_op.alter_column("callback_allow_http", existing_type=sa.Boolean(), nullable=False)
        batch_op.alter_column("callback_private_networks", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    # The tenants keep their own secrets (the code before this revision signs with them).
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.alter_column("callback_secret", existing_type=sa.String(length=80), nullable=True)
        batch_op.drop_column("callback_private_networks")
        batch_op.drop_column("callback_allow_http")
