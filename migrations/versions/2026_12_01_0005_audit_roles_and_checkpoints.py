"""audit: LOGIN service role, signed checkpoints

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 00:00:00.000000

The table `audit_checkpoints` (signed checkpoints, moderation.audit.checkpoint) on every
database. On PostgreSQL, what keeps the audit log out of reach of the services' own login:
- the LOGIN role `moderation_service`, a member of `moderation_app`, with no other attribute
  (not superuser, no CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS): services log in as it,
  migrations run as the owner. Its password is set by `moderation migrate` (from
  MODERATION_SERVICE_DB_PASSWORD) or by the operator. Roles are cluster-wide: created once,
  never dropped by a downgrade (other databases of the cluster may use them);
- `moderation_app`'s grants, complete: read and write on every table, minus UPDATE, DELETE and
  TRUNCATE on the audit tables and writes to alembic_version; default privileges cover the
  tables and sequences that later migrations create (run by the same owner);
- a trigger on `audit_heads`: a head is never deleted, and moves only forward, to the chain's
  last row (its seq and hash), so nobody can hide rows by moving a head back;
- `audit_checkpoints` append-only, like `audit_events`.
Nothing here makes the owner or a superuser harmless: they can drop the triggers. What catches
them is a signed checkpoint kept outside the database.

Lock safety: on a live PostgreSQL, CREATE INDEX without CONCURRENTLY and ALTER TABLE ... ADD
COLUMN with a volatile default take locks that stop ingest. Prefer nullable columns, backfill
in batches, and op.create_index(..., postgresql_concurrently=True) inside
op.get_context().autocommit_block(). (A new table and triggers, as here: CREATE TRIGGER on
audit_heads takes a SHARE ROW EXCLUSIVE lock for a moment; appends wait, none fail.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "moderation_app"
SERVICE_ROLE = "moderation_service"
GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_audit_checkpoints_tenant_seq", ["tenant_id", "seq"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        schema = _quoted_schema()
        _roles()
        _grants(schema)
        _guards(schema)


def _quoted_schema() -> str:
    name = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
    assert name, "no current schema"
    return str(name)


def _do(body: str, on_denied: str) -> None:
    """Run a PL/pgSQL block; a role created meanwhile by a migration of another database of the
    cluster is no error, and a missing privilege (no CREATEROLE) is a notice, not a failure."""
    op.execute(
        f"""
        DO $$
        BEGIN
            {body}
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN RAISE NOTICE '{on_denied}';
        END
        $$;
        """
    )


def _roles() -> None:
    _do(
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
        f"CREATE ROLE {APP_ROLE} NOLOGIN; END IF;",
        f"no CREATEROLE: role {APP_ROLE} not created",
    )
    _do(
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SERVICE_ROLE}') THEN "
        f"CREATE ROLE {SERVICE_ROLE} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; "
        "END IF;",
        f"no CREATEROLE: role {SERVICE_ROLE} not created (create a LOGIN member of {APP_ROLE} by hand)",
    )
    # A role made earlier by hand keeps nothing that would put it above the audit guards.
    _do(
        f"IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SERVICE_ROLE}' AND (rolsuper OR rolcreatedb "
        "OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN "
        f"ALTER ROLE {SERVICE_ROLE} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; END IF;",
        f"role {SERVICE_ROLE} has attributes this migration may not remove: remove them by hand",
    )
    _do(
        f"IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') "
        f"AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SERVICE_ROLE}') THEN "
        f"GRANT {APP_ROLE} TO {SERVICE_ROLE}; END IF;",
        f"could not make {SERVICE_ROLE} a member of {APP_ROLE}",
    )


def _grants(schema: str) -> None:
    statements = [
        f"GRANT USAGE ON SCHEMA {schema} TO {APP_ROLE}",
        # Everything the pipeline writes (submissions, findings, decisions, review tasks,
        # callback deliveries, banks, keys, tenants, ...), then the audit exceptions.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {APP_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {APP_ROLE}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {APP_ROLE}",
        # UPDATE stays: an append moves the head (forward only, see the trigger) and locks it.
        f"REVOKE DELETE, TRUNCATE ON audit_heads FROM {APP_ROLE}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM {APP_ROLE}",
        # `moderation up` as the service role checks the revision; it never changes it.
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {APP_ROLE}",
        # Tables and sequences of later migrations (created by this same owner).
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}",
    ]
    body = " ".join(f"EXECUTE '{s}';" for s in statements)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                {body}
            END IF;
        END
        $$;
        """
    )
    # Before PostgreSQL 15 every role may create objects in `public`: a service role could plant
    # a function or table there. Only the owner creates objects in the app's schema.
    _do(
        f"EXECUTE 'REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC';",
        "not the schema owner: CREATE on the schema was not revoked from PUBLIC",
    )


def _guards(schema: str) -> None:
    # search_path pinned with pg_temp last: a session cannot shadow audit_events with a
    # temporary table of the same name to satisfy the existence check.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION audit_heads_forward_only() RETURNS trigger
        SET search_path = {schema}, pg_temp
        -- Plan its queries on every call: a plan cached while the chain was empty (a seq or
        -- time-index scan) would read the whole chain on every append once it has grown.
        SET plan_cache_mode = force_custom_plan
        AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
                RAISE EXCEPTION 'audit_heads: % rejected (a chain head is never removed)', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM audit_heads h WHERE h.tenant_id = NEW.tenant_id) THEN
                RETURN NEW;  -- a conflict: the primary key (or ON CONFLICT DO NOTHING) settles it
            END IF;
            IF TG_OP = 'UPDATE' THEN
                IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
                    RAISE EXCEPTION 'audit_heads: a head belongs to one tenant'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.last_hash IS DISTINCT FROM OLD.last_hash) THEN
                    RAISE EXCEPTION 'audit_heads: the head of % may only move forward (% -> %)',
                        NEW.tenant_id, OLD.seq, NEW.seq USING ERRCODE = 'insufficient_privilege';
                END IF;
            END IF;
            IF NEW.seq = 0 THEN
                IF NEW.last_hash IS DISTINCT FROM '{GENESIS}' THEN
                    RAISE EXCEPTION 'audit_heads: an empty chain has the genesis hash'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSIF NOT EXISTS (
                SELECT 1 FROM audit_events e
                WHERE e.tenant_id = NEW.tenant_id AND e.seq = NEW.seq AND e.row_hash = NEW.last_hash
            ) THEN
                RAISE EXCEPTION 'audit_heads: no event % of % with that hash', NEW.seq, NEW.tenant_id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            -- max(seq) of one tenant: a backward step on the (tenant_id, seq) unique index. (An EXISTS
            -- on seq > NEW.seq was planned on the (tenant_id, occurred_at) index and read the whole
            -- chain on every append: 2,400 rows per submission in the pipeline benchmark.)
            IF (SELECT max(e.seq) FROM audit_events e WHERE e.tenant_id = NEW.tenant_id) > NEW.seq THEN
                RAISE EXCEPTION 'audit_heads: events of % lie past seq %', NEW.tenant_id, NEW.seq
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql;
        """
    )
    op.execute("DROP TRIGGER IF EXISTS audit_heads_forward_only ON audit_heads")
    op.execute("DROP TRIGGER IF EXISTS audit_heads_no_truncate ON audit_heads")
    op.execute(
        "CREATE TRIGGER audit_heads_forward_only BEFORE INSERT OR UPDATE OR DELETE ON audit_heads "
        "FOR EACH ROW EXECUTE FUNCTION audit_heads_forward_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_forward_only()"
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION audit_checkpoints_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'audit_checkpoints is append-only (% rejected)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END;
        $$ LANGUAGE plpgsql;
        """
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON audit_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        schema = _quoted_schema()
        op.execute("DROP TRIGGER IF EXISTS audit_heads_forward_only ON audit_heads")
        op.execute("DROP TRIGGER IF EXISTS audit_heads_no_truncate ON audit_heads")
        op.execute("DROP FUNCTION IF EXISTS audit_heads_forward_only()")
        _do(
            f"IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
            f"EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
            f"REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE}'; "
            f"EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE}'; "
            "END IF;",
            "default privileges not revoked",
        )
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_checkpoints_tenant_seq")
    op.drop_table("audit_checkpoints")  # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_checkpoints_append_only()")
