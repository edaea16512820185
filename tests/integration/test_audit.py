"""The audit log on PostgreSQL: append-only guards, and verify finds hand-made tampering."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg2
import pytest
from sqlalchemy import text

from moderation import audit
from moderation.access.keys import create_key
from tests.support.http import auth
from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def tenant_with_events(ctx: Any, client: Any, tenant: str, n: int = 3) -> dict[str, str]:
    """A tenant whose chain holds 2 key events and, per submission, received/analyzed/decided."""
    with ctx.engine.begin() as conn:
        sub = create_key(conn, tenant, ["submitter"])
        aud = create_key(conn, tenant, ["auditor"])
    for i in range(n):
        r = client.post(
            "/v1/submissions",
            headers=auth(sub),
            files={"file": ("x.jpg", picture(900 + i))},
            data={"policy": "hash-only"},
        )
        assert r.status_code == 202

    def chain_length() -> int:
        with ctx.engine.connect() as conn:
            return audit.verify(conn, tenant).checked

    wait_until(lambda: chain_length() >= 2 + 3 * n, 60, what=f"{tenant} decided")
    return {"submitter": sub, "auditor": aud}


def raw(pg_url: str) -> Any:
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    return conn


def test_update_delete_truncate_are_rejected(ctx, client, pg_url, worker) -> None:
    tenant_with_events(ctx, client, "guarded", 1)
    conn = raw(pg_url)
    with conn.cursor() as cur:
        for sql in (
            "UPDATE audit_events SET action = 'x' WHERE tenant_id = 'guarded'",
            "DELETE FROM audit_events WHERE tenant_id = 'guarded'",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(psycopg2.Error, match="append-only"):
                cur.execute(sql)
    conn.close()


def test_app_role_has_no_update_delete_truncate_grants(ctx, pg_url) -> None:
    conn = raw(pg_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = 'moderation_app' AND table_name = 'audit_events'"
        )
        grants = {r[0] for r in cur.fetchall()}
        assert {"INSERT", "SELECT"} <= grants
        assert not grants & {"UPDATE", "DELETE", "TRUNCATE"}
        cur.execute("SET ROLE moderation_app")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("UPDATE audit_events SET action = 'x'")
    conn.close()


def tamper(pg_url: str, sql: str) -> None:
    """What a superuser would have to do by hand: switch the trigger off, edit, switch it back."""
    conn = raw(pg_url)
    with conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # disables triggers for this session
        cur.execute(sql)
    conn.close()


@pytest.mark.parametrize(
    ("tenant", "sql", "reason"),
    [
        (
            "tamper-body",
            "UPDATE audit_events SET body = replace(body, '\"hash-only\"', '\"default\"') "
            "WHERE tenant_id = 'tamper-body' AND seq = 3",
            "row edited",
        ),
        (
            "tamper-col",
            "UPDATE audit_events SET action = 'rejected' WHERE tenant_id = 'tamper-col' AND seq = 2",
            "column action",
        ),
        ("tamper-gap", "DELETE FROM audit_events WHERE tenant_id = 'tamper-gap' AND seq = 3", "rows removed"),
        (
            "tamper-tail",
            "DELETE FROM audit_events WHERE tenant_id = 'tamper-tail' AND seq = "
            "(SELECT max(seq) FROM audit_events WHERE tenant_id = 'tamper-tail')",
            "rows removed",
        ),
        (  # the head moved back two rows (with its hash), hiding the rows after it
            "tamper-head",
            "UPDATE audit_heads SET seq = seq - 2, last_hash = (SELECT e.row_hash FROM audit_events e "
            "WHERE e.tenant_id = 'tamper-head' AND e.seq = audit_heads.seq - 2) WHERE tenant_id = 'tamper-head'",
            "head moved back",
        ),
    ],
)
def test_verify_reports_the_first_tampered_row(ctx, client, pg_url, worker, tenant, sql, reason) -> None:
    k = tenant_with_events(ctx, client, tenant)
    before = client.get("/v1/audit/verify", headers=auth(k["auditor"])).json()
    assert before["ok"] is True and before["checked"] >= 4
    tamper(pg_url, sql)
    after = client.get("/v1/audit/verify", headers=auth(k["auditor"])).json()
    assert after["ok"] is False
    assert reason in after["first_break"]["reason"]
    if tenant == "tamper-body":
        assert after["first_break"]["seq"] == 3
    if tenant == "tamper-gap":  # the row after the hole is the first that does not verify
        assert after["first_break"]["seq"] == 4 and "3 was expected" in after["first_break"]["reason"]
    # Other tenants' chains are untouched.
    with ctx.engine.connect() as conn:
        assert audit.verify(conn, "acme").ok
    # The CLI agrees, with a failing exit code.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "audit", "verify", "--tenant", tenant],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 1 and "BROKEN" in cli.stdout
    ok = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "audit", "verify", "--tenant", "acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_concurrent_appends_keep_one_chain(ctx) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        with ctx.engine.begin() as conn:
            audit.append(conn, "busy", [audit.Event("exported", actor=f"t{i}", facts={"i": i})])

    with ctx.engine.begin() as conn:
        audit.ensure_head(conn, "busy")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(200)))
    with ctx.engine.connect() as conn:
        result = audit.verify(conn, "busy")
        seqs = conn.execute(text("SELECT seq FROM audit_events WHERE tenant_id = 'busy' ORDER BY seq")).scalars()
        assert list(seqs) == list(range(1, 201))
    assert result.ok and result.checked == 200
