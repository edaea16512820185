"""The services' LOGIN role on PostgreSQL: it runs the whole pipeline, and cannot rewrite the
audit log, switch its guards off, become the owner, or move a chain head back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from sqlalchemy import create_engine, make_url, select, text

from moderation import audit
from moderation.access.keys import create_key
from moderation.db.migrate import SERVICE_ROLE, scram_verifier
from moderation.db.tables import audit_events, review_tasks
from moderation.settings import Settings
from tests.support.banks import bank_changes_applied
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.services import scratch_database

pytestmark = pytest.mark.services

# What the app role may do to the audit tables (every other table: read and write).
AUDIT_TABLES = {
    "audit_events": {"SELECT", "INSERT"},
    "audit_heads": {"SELECT", "INSERT", "UPDATE"},  # UPDATE: forward only (trigger)
    "audit_checkpoints": {"SELECT", "INSERT"},
    # Review evidence: appeals and golden answers are updated as they are decided, never
    # deleted; reveals of originals are only appended.
    "appeals": {"SELECT", "INSERT", "UPDATE"},
    "golden_answers": {"SELECT", "INSERT", "UPDATE"},
    "media_reveals": {"SELECT", "INSERT"},
    "dsa_ledger": {"SELECT", "INSERT"},
}


@pytest.fixture(scope="module")
def service_url(pg_url: str, service_env: dict[str, str]) -> str:
    """The scratch database as the services log in to it (trust auth here: no password)."""
    return make_url(pg_url).set(username=SERVICE_ROLE, password=None).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def service_engine(service_url: str) -> Iterator[Any]:
    engine = create_engine(Settings(database_url=service_url).db_url)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def service_conn(service_url: str) -> Iterator[Any]:
    """A raw connection as the service role, autocommit, closed afterwards."""
    conn = psycopg2.connect(service_url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def chain_of(service_engine: Any, tenant: str, n: int) -> None:
    """`n` events appended by the app's own path, logged in as the service role."""
    with service_engine.begin() as conn:
        audit.ensure_head(conn, tenant)
    for i in range(n):
        with service_engine.begin() as conn:
            audit.append(conn, tenant, [audit.Event("exported", actor="test", facts={"i": i})])


def head(service_engine: Any, tenant: str) -> tuple[int, str]:
    with service_engine.connect() as conn:
        row = conn.execute(text("SELECT seq, last_hash FROM audit_heads WHERE tenant_id = :t"), {"t": tenant}).one()
    return int(row.seq), str(row.last_hash)


def test_service_role_is_a_plain_login_member_of_the_app_role(pg_url, service_url) -> None:
    with service_conn(service_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        )
        assert cur.fetchone() == (True, False, False, False, False, False)
        cur.execute("SELECT pg_has_role(current_user, 'moderation_app', 'USAGE')")
        assert cur.fetchone() == (True,)
        cur.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = current_schema()")
        owners = {r[0] for r in cur.fetchall()}
        assert SERVICE_ROLE not in owners and "moderation_app" not in owners
        for owner in owners:
            cur.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (owner,))
            assert cur.fetchone() == (False,), f"the service role is a member of the owner {owner}"


def test_app_role_can_write_every_table_but_the_audit_ones(service_url) -> None:
    """Grants are complete for every table the migrations made, later ones included (default
    privileges), and the audit tables keep only what an append needs."""
    with service_conn(service_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        names = {r[0] for r in cur.fetchall()} - {"alembic_version"}
        assert set(AUDIT_TABLES) <= names and "submissions" in names
        for name in sorted(names):
            allowed = {
                p
                for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")
                if _has(cur, name, p)
            }
            assert allowed == AUDIT_TABLES.get(name, {"SELECT", "INSERT", "UPDATE", "DELETE"}), name
        assert _has(cur, "alembic_version", "SELECT") and not _has(cur, "alembic_version", "UPDATE")


def _has(cur: Any, table: str, privilege: str) -> bool:
    cur.execute("SELECT has_table_privilege(current_user, %s, %s)", (table, privilege))
    return bool(cur.fetchone()[0])


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_events SET action = 'x' WHERE tenant_id = 'roles-guard'",
        "DELETE FROM audit_events WHERE tenant_id = 'roles-guard'",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_events_no_update_delete ON audit_events",
        "ALTER TABLE audit_heads DISABLE TRIGGER audit_heads_forward_only",
        "DROP TRIGGER audit_heads_forward_only ON audit_heads",
        "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS "
        "$$ BEGIN RETURN OLD; END $$ LANGUAGE plpgsql",
        "SET session_replication_role = replica",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "ALTER ROLE moderation_service SUPERUSER",
        "ALTER TABLE audit_events OWNER TO moderation_service",
        "DROP TABLE audit_events",
        "CREATE TABLE audit_shadow (i int)",
        "UPDATE audit_checkpoints SET seq = 0",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_heads WHERE tenant_id = 'roles-guard'",
        "TRUNCATE audit_heads",
    ],
)
def test_service_role_cannot_rewrite_or_unguard_the_log(service_engine, service_url, sql) -> None:
    chain_of(service_engine, "roles-guard", 2)
    with service_conn(service_url) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error) as caught:
            cur.execute(sql)
        assert caught.value.pgcode == "42501", caught.value  # insufficient_privilege
    with service_engine.connect() as conn:
        assert audit.verify(conn, "roles-guard").ok


def test_service_role_cannot_become_the_owner(service_url) -> None:
    with service_conn(service_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_events'")
        owner = cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f'SET ROLE "{owner}"')
        cur.execute("SET ROLE moderation_app")  # its own group: allowed, and no stronger
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f'SET ROLE "{owner}"')


@pytest.mark.parametrize(
    ("what", "sql"),
    [
        (
            "back two rows, with that row's hash",
            "UPDATE audit_heads SET seq = seq - 2, last_hash = "
            "(SELECT row_hash FROM audit_events WHERE tenant_id = %(t)s AND seq = 2) WHERE tenant_id = %(t)s",
        ),
        (
            "back to the genesis",
            f"UPDATE audit_heads SET seq = 0, last_hash = '{audit.GENESIS}' WHERE tenant_id = %(t)s",
        ),
        ("same seq, another hash", "UPDATE audit_heads SET last_hash = repeat('a', 64) WHERE tenant_id = %(t)s"),
        ("forward to a row that does not exist", "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = %(t)s"),
        ("to another tenant", "UPDATE audit_heads SET tenant_id = 'roles-other' WHERE tenant_id = %(t)s"),
        ("deleted", "DELETE FROM audit_heads WHERE tenant_id = %(t)s"),
    ],
)
def test_a_head_never_moves_back(service_engine, service_url, what, sql) -> None:
    tenant = f"roles-head-{abs(hash(what)) % 10**8}"
    chain_of(service_engine, tenant, 4)
    before = head(service_engine, tenant)
    assert before[0] == 4
    with (
        service_conn(service_url) as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.InsufficientPrivilege),
    ):
        cur.execute(sql, {"t": tenant})
    assert head(service_engine, tenant) == before
    with service_engine.connect() as conn:
        assert audit.verify(conn, tenant).ok


def test_a_head_cannot_hide_rows_appended_past_it(service_engine, service_url) -> None:
    """Rows inserted by hand past the head, then the head moved to a row short of the last one."""
    tenant = "roles-past"
    chain_of(service_engine, tenant, 2)
    _, last = head(service_engine, tenant)
    body = audit.canonical({"tenant_id": tenant, "seq": 3})
    h3 = audit.chain_hash(last, body)
    body4 = audit.canonical({"tenant_id": tenant, "seq": 4})
    with service_conn(service_url) as conn, conn.cursor() as cur:
        for s, prev, b, h in ((3, last, body, h3), (4, h3, body4, audit.chain_hash(h3, body4))):
            cur.execute(
                "INSERT INTO audit_events (tenant_id, seq, occurred_at, action, actor, body, prev_hash, row_hash) "
                "VALUES (%s, %s, now(), 'exported', 'x', %s, %s, %s)",
                (tenant, s, b, prev, h),
            )
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="lie past"):
            cur.execute("UPDATE audit_heads SET seq = 3, last_hash = %s WHERE tenant_id = %s", (h3, tenant))
    with service_engine.connect() as conn:  # and verify reports the rows past the head
        result = audit.verify(conn, tenant)
    assert not result.ok and "past the recorded head" in result.first_break["reason"]


def test_a_temporary_table_cannot_stand_in_for_the_log(service_engine, service_url) -> None:
    """The head trigger reads the real audit_events, not a same-named temporary table."""
    tenant = "roles-shadow"
    chain_of(service_engine, tenant, 3)
    with service_conn(service_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE audit_events (tenant_id text, seq bigint, row_hash text)")
        cur.execute("INSERT INTO audit_events VALUES (%s, 4, repeat('b', 64))", (tenant,))
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="no event 4"):
            cur.execute("UPDATE audit_heads SET seq = 4, last_hash = repeat('b', 64) WHERE tenant_id = %s", (tenant,))
    assert head(service_engine, tenant)[0] == 3


def test_new_heads_start_at_the_genesis(service_url) -> None:
    with service_conn(service_url) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO audit_heads VALUES ('roles-new', 5, repeat('c', 64))")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO audit_heads VALUES ('roles-new', 0, repeat('c', 64))")
        cur.execute(f"INSERT INTO audit_heads VALUES ('roles-new', 0, '{audit.GENESIS}')")


def test_appends_keep_working_concurrently_as_the_service_role(service_engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tenant = "roles-busy"
    with service_engine.begin() as conn:
        audit.ensure_head(conn, tenant)
        audit.ensure_head(conn, tenant)  # again: a no-op, not a trigger error

    def one(i: int) -> None:
        with service_engine.begin() as conn:
            audit.append(conn, tenant, [audit.Event("exported", actor=f"t{i}"), audit.Event("exported", actor="u")])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(60)))
    with service_engine.connect() as conn:
        result = audit.verify(conn, tenant)
    assert result.ok and result.checked == 120 and result.head == {"seq": 120, "last_hash": result.head["last_hash"]}


def test_the_pipeline_runs_as_the_service_role(service_url, service_engine, procs) -> None:
    """API and worker logged in as the service role: keys, banks, submissions, analysis,
    decisions, review routing and the audit chain all work."""
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.pipeline.context import Context

    ctx = Context.build(Settings(database_url=service_url))
    procs.worker(DATABASE_URL=service_url)
    tenant = "roles-pipeline"
    with ctx.engine.begin() as conn:
        keys = {r: create_key(conn, tenant, [r]) for r in ("submitter", "auditor", "admin")}
    with TestClient(create_app(ctx.settings, ctx)) as client:
        banked = picture(1201, size=(640, 480))
        r = client.post("/v1/banks", headers=auth(keys["admin"]), json={"name": "bad", "kind": "bad"})
        assert r.status_code == 201, r.text
        r = client.post("/v1/banks/bad/images", headers=auth(keys["admin"]), files={"files": ("b.jpg", banked)})
        assert r.status_code == 201, r.text
        bank_changes_applied(ctx, tenant)
        blocked = submit(client, keys["submitter"], banked, policy="hash-only")
        allowed = submit(client, keys["submitter"], picture(1202), policy="hash-only")
        reviewed = submit(client, keys["submitter"], picture(1203), policy="test-cascade", caption="harassment=0.6")
        assert wait_final(client, keys["submitter"], blocked["id"])["decision"]["action"] == "block"
        assert wait_final(client, keys["submitter"], allowed["id"])["decision"]["action"] == "allow"
        assert wait_final(client, keys["submitter"], reviewed["id"])["status"] == "in_review"
        verify = client.get("/v1/audit/verify", headers=auth(keys["auditor"])).json()
        assert verify["ok"] is True and verify["checked"] >= 10
    with service_engine.connect() as conn:
        assert conn.execute(select(review_tasks.c.id).where(review_tasks.c.submission_id == reviewed["id"])).first()
        actions = set(conn.execute(select(audit_events.c.action).where(audit_events.c.tenant_id == tenant)).scalars())
        assert {"key_created", "bank_changed", "received", "decided", "routed_to_review"} <= actions
        assert conn.execute(text("SELECT current_user")).scalar() == SERVICE_ROLE
    ctx.engine.dispose()


def test_migrate_sets_the_service_password_as_a_scram_verifier(pg_url) -> None:
    """The verifier computed here is the one PostgreSQL itself stores for that password and salt."""
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute("DROP ROLE IF EXISTS moderation_scram_probe")
        cur.execute("CREATE ROLE moderation_scram_probe PASSWORD 'pässword-1'")
        try:
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'moderation_scram_probe'")
            stored = cur.fetchone()[0]
        finally:
            cur.execute("DROP ROLE moderation_scram_probe")
    admin.close()
    import base64

    head_, _ = stored.split("$", 1)[1].split("$")
    iterations, salt = head_.split(":")
    assert scram_verifier("pässword-1", base64.b64decode(salt), int(iterations)) == stored


def test_migrate_runs_as_the_owner_and_services_cannot(pg_url) -> None:
    """`moderation migrate` uses MODERATION_MIGRATE_DATABASE_URL (the owner) while DATABASE_URL
    names the service role; the service role alone cannot migrate a new database, and sets
    its password (as a verifier) when MODERATION_SERVICE_DB_PASSWORD is given."""

    def migrate(**env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MODERATION_MIGRATE_DATABASE_URL")}
        return subprocess.run(
            [sys.executable, "-m", "moderation.cli", "migrate"],
            capture_output=True,
            text=True,
            env={**base, "PYTHONPATH": str(REPO), **env},
            timeout=120,
        )

    with scratch_database(f"moderation_roles_{os.getpid()}") as owner_url:
        service = make_url(owner_url).set(username=SERVICE_ROLE).render_as_string(hide_password=False)
        denied = migrate(DATABASE_URL=service)
        assert denied.returncode != 0 and "permission denied" in denied.stderr
        done = migrate(
            DATABASE_URL=service, MODERATION_MIGRATE_DATABASE_URL=owner_url, MODERATION_SERVICE_DB_PASSWORD="pw-1"
        )
        assert done.returncode == 0, done.stderr
        again = migrate(DATABASE_URL=service)  # at head: the service role only reads the revision
        assert again.returncode == 0, again.stderr
        admin = psycopg2.connect(owner_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'submissions'")
            assert cur.fetchone()[0] == make_url(owner_url).username
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (SERVICE_ROLE,))
            assert cur.fetchone()[0].startswith("SCRAM-SHA-256$4096:")
            cur.execute(f"ALTER ROLE {SERVICE_ROLE} PASSWORD NULL")  # trust auth here; leave it as found
        admin.close()
