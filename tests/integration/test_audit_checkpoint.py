"""Signed audit checkpoints on PostgreSQL: a chain rewritten wholesale by a database superuser
verifies on its own, and is reported against a checkpoint taken before the rewrite; forged,
foreign and truncated cases too, by the CLI and the API."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import func, select

from moderation import audit
from moderation.access.keys import create_key
from moderation.audit import checkpoint as cps
from moderation.db.tables import audit_checkpoints
from moderation.queue import T_AUDIT_CHECKPOINT, celery_config
from moderation.settings import Settings
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.paths import REPO

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    private, public, _ = cps.write_keypair(tmp_path_factory.mktemp("audit-keys"))
    other_private, other_public, _ = cps.write_keypair(tmp_path_factory.mktemp("other-keys"))
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


@pytest.fixture(scope="module")
def api(ctx: Any, keypair: dict[str, Path]) -> Iterator[Any]:
    """The API of a deployment that has the verify key configured (public half only)."""
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.pipeline.context import Context

    settings = Settings(audit_verify_key=keypair["public"])
    own = Context.build(settings)
    with TestClient(create_app(settings, own)) as c:
        yield c
    own.engine.dispose()


def tenant_with_decisions(ctx: Any, client: Any, tenant: str) -> dict[str, str]:
    """A tenant with one blocked and two allowed submissions, all decided."""
    with ctx.engine.begin() as conn:
        keys = {r: create_key(conn, tenant, [r]) for r in ("submitter", "auditor")}
    blocked = submit(client, keys["submitter"], picture(1301), policy="test-cascade", caption="hate=0.97")
    ids = [blocked["id"]] + [
        submit(client, keys["submitter"], picture(1302 + i), policy="hash-only")["id"] for i in range(2)
    ]
    finals = [wait_final(client, keys["submitter"], sid) for sid in ids]
    assert [f["decision"]["action"] for f in finals] == ["block", "allow", "allow"]
    return keys


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=120,
    )


def take_checkpoint(tenant: str, out: Path, key: Path) -> dict[str, Any]:
    r = cli("audit", "checkpoint", "--tenant", tenant, "--out", str(out), MODERATION_AUDIT_SIGNING_KEY=str(key))
    assert r.returncode == 0, r.stderr
    return dict(json.loads(out.read_text()))


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def superuser(pg_url: str) -> Any:
    """A superuser session with triggers off: what an insider with the database can do."""
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
    return conn


def rewrite(pg_url: str, tenant: str, edit: Callable[[str], str]) -> int:
    """Delete the tenant's whole chain and replay it with `edit` applied to every body, hashes
    recomputed and the head moved to the new last row. Returns the number of rows edited."""
    conn = superuser(pg_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT seq, occurred_at, action, submission_id, category, automated, actor, body "
            "FROM audit_events WHERE tenant_id = %s ORDER BY seq",
            (tenant,),
        )
        rows = cur.fetchall()
        cur.execute("DELETE FROM audit_events WHERE tenant_id = %s", (tenant,))
        prev, changed = audit.GENESIS, 0
        for seq, occurred_at, action, submission_id, category, automated, actor, body in rows:
            new_body = edit(body)
            changed += new_body != body
            row_hash = audit.chain_hash(prev, new_body)
            cur.execute(
                "INSERT INTO audit_events (tenant_id, seq, occurred_at, action, submission_id, category, automated, "
                "actor, body, prev_hash, row_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (tenant, seq, occurred_at, action, submission_id, category, automated, actor, new_body, prev, row_hash),
            )
            prev = row_hash
        cur.execute("UPDATE audit_heads SET seq = %s, last_hash = %s WHERE tenant_id = %s", (len(rows), prev, tenant))
    conn.close()
    return changed


def verify_api(api: Any, key: str, checkpoint: str | None = None) -> Any:
    params = {"checkpoint": checkpoint} if checkpoint is not None else {}
    return api.get("/v1/audit/verify", headers=auth(key), params=params)


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path) -> None:
    r = cli("audit", "keygen", "--out", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    private, public = tmp_path / "keys" / cps.SIGNING_KEY_FILE, tmp_path / "keys" / cps.VERIFY_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = cps.key_id(cps.load_verify_key(public))
    assert kid in r.stdout and cps.key_id(cps.load_signing_key(private).public_key()) == kid
    again = cli("audit", "keygen", "--out", str(tmp_path / "keys"))
    assert again.returncode == 2 and cps.key_id(cps.load_verify_key(public)) == kid


def test_superuser_rewrite_is_caught_by_an_earlier_checkpoint(ctx, client, api, worker, pg_url, keypair, tmp_path):
    tenant = "ckpt-rewrite"
    keys = tenant_with_decisions(ctx, client, tenant)
    file = tmp_path / "checkpoint.json"
    cp = take_checkpoint(tenant, file, keypair["private"])
    with ctx.engine.connect() as conn:
        head = audit.verify(conn, tenant).head
    assert head is not None and (cp["tenant_id"], cp["seq"], cp["head_hash"]) == (
        tenant,
        head["seq"],
        head["last_hash"],
    )
    assert cp["key_id"] == cps.key_id(cps.load_verify_key(keypair["public"]))
    with ctx.engine.connect() as conn:  # stored too, signed the same
        assert conn.execute(select(audit_checkpoints.c.signature).where(audit_checkpoints.c.id == cp["id"])).scalar()

    # Before: the log extends the checkpoint, by file and by stored id, on the API and the CLI.
    for ref in (b64(file.read_bytes()), str(cp["id"])):
        body = verify_api(api, keys["auditor"], ref).json()
        assert body["ok"] is True and body["checkpoint"]["ok"] is True, body
    env = {"MODERATION_AUDIT_VERIFY_KEY": str(keypair["public"])}
    ok = cli("audit", "verify", "--tenant", tenant, "--checkpoint", str(file), **env)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr

    # The insider: every row deleted and replayed with `block` turned into `allow`, hashes
    # recomputed, head moved. The chain alone cannot tell.
    assert rewrite(pg_url, tenant, lambda body: body.replace('"block"', '"allow"')) >= 1
    alone = verify_api(api, keys["auditor"]).json()
    assert alone["ok"] is True  # the documented gap that checkpoints close
    for ref in (b64(file.read_bytes()), str(cp["id"])):
        body = verify_api(api, keys["auditor"], ref).json()
        assert body["ok"] is False and body["checkpoint"]["ok"] is False, body
        assert "rewritten" in body["first_break"]["reason"] and body["first_break"]["seq"] == cp["seq"]
    broken = cli("audit", "verify", "--tenant", tenant, "--checkpoint", str(file), **env)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout and "rewritten" in broken.stdout

    # And a new checkpoint refuses to launder it: the chain no longer extends the stored one.
    refused = cli(
        "audit",
        "checkpoint",
        "--tenant",
        tenant,
        "--out",
        str(tmp_path / "after.json"),
        MODERATION_AUDIT_SIGNING_KEY=str(keypair["private"]),
    )
    assert refused.returncode == 1 and not (tmp_path / "after.json").exists()


def test_truncated_chain_is_caught_below_the_checkpoint(ctx, client, api, worker, pg_url, keypair, tmp_path):
    tenant = "ckpt-truncate"
    keys = tenant_with_decisions(ctx, client, tenant)
    file = tmp_path / "checkpoint.json"
    cp = take_checkpoint(tenant, file, keypair["private"])
    keep = cp["seq"] - 3
    conn = superuser(pg_url)
    with conn.cursor() as cur:  # rows after `keep` deleted, head moved back onto the new last row
        cur.execute("DELETE FROM audit_events WHERE tenant_id = %s AND seq > %s", (tenant, keep))
        cur.execute(
            "UPDATE audit_heads SET seq = %s, last_hash = (SELECT row_hash FROM audit_events "
            "WHERE tenant_id = %s AND seq = %s) WHERE tenant_id = %s",
            (keep, tenant, keep, tenant),
        )
    conn.close()
    assert verify_api(api, keys["auditor"]).json()["ok"] is True  # a shorter, consistent chain
    body = verify_api(api, keys["auditor"], b64(file.read_bytes())).json()
    assert body["ok"] is False and "truncated" in body["first_break"]["reason"], body
    r = cli("audit", "verify", "--checkpoint", str(file), MODERATION_AUDIT_VERIFY_KEY=str(keypair["public"]))
    assert r.returncode == 1 and "truncated" in r.stdout


def test_forged_and_altered_checkpoints_are_refused(ctx, client, api, worker, keypair, tmp_path) -> None:
    tenant = "ckpt-forged"
    keys = tenant_with_decisions(ctx, client, tenant)
    genuine = take_checkpoint(tenant, tmp_path / "genuine.json", keypair["private"])
    # Signed by another key (over the true head): refused, whatever it claims.
    forged = take_checkpoint(tenant, tmp_path / "forged.json", keypair["other_private"])
    # Another key's signature presented under our key id.
    impostor = {**forged, "key_id": genuine["key_id"]}
    # A genuine checkpoint with its seq or hash edited.
    moved = {**genuine, "seq": genuine["seq"] - 1}
    for bad, why in ((forged, "another key"), (impostor, "does not verify"), (moved, "does not verify")):
        body = verify_api(api, keys["auditor"], b64(bad)).json()
        assert body["ok"] is False and why in body["checkpoint"]["reason"], body
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        r = cli("audit", "verify", "--checkpoint", str(path), MODERATION_AUDIT_VERIFY_KEY=str(keypair["public"]))
        assert r.returncode == 1, r.stdout
    # The forged one was stored by the signer too: verifying against its id fails the same way.
    body = verify_api(api, keys["auditor"], str(forged["id"])).json()
    assert body["ok"] is False and "another key" in body["checkpoint"]["reason"]
    # A deployment without a verify key verifies no checkpoint (the session API has none).
    none = verify_api(client, keys["auditor"], b64(genuine)).json()
    assert none["ok"] is False and "no verify key" in none["checkpoint"]["reason"]
    # Unusable input on the CLI: exit 2 (no verify key, a file that is not a checkpoint).
    genuine_file = tmp_path / "genuine.json"
    no_key = cli("audit", "verify", "--checkpoint", str(genuine_file), MODERATION_AUDIT_VERIFY_KEY="")
    assert no_key.returncode == 2, no_key.stdout + no_key.stderr
    (tmp_path / "junk.json").write_text("{}")
    junk = cli(
        "audit",
        "verify",
        "--checkpoint",
        str(tmp_path / "junk.json"),
        MODERATION_AUDIT_VERIFY_KEY=str(keypair["public"]),
    )
    assert junk.returncode == 2, junk.stdout + junk.stderr
    # The chain itself is fine all along.
    assert verify_api(api, keys["auditor"]).json()["ok"] is True


def test_checkpoints_are_tenant_scoped(ctx, client, api, worker, keypair, tmp_path) -> None:
    a = tenant_with_decisions(ctx, client, "ckpt-a")
    b = tenant_with_decisions(ctx, client, "ckpt-b")
    cp_b = take_checkpoint("ckpt-b", tmp_path / "b.json", keypair["private"])
    # B's stored id is not A's: 404, like an id that does not exist.
    for ref in (str(cp_b["id"]), "999999999"):
        r = verify_api(api, a["auditor"], ref)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    assert verify_api(api, b["auditor"], str(cp_b["id"])).json()["ok"] is True
    # B's checkpoint file presented by A: signed, but not A's log.
    body = verify_api(api, a["auditor"], b64(cp_b)).json()
    assert body["ok"] is False and "another tenant" in body["checkpoint"]["reason"]
    r = cli(
        "audit",
        "verify",
        "--tenant",
        "ckpt-a",
        "--checkpoint",
        str(tmp_path / "b.json"),
        MODERATION_AUDIT_VERIFY_KEY=str(keypair["public"]),
    )
    assert r.returncode == 1 and "another tenant" in r.stdout
    # Malformed references are 422, never 500; other roles are refused.
    for ref in ("!!!", b64(b"not json"), b64({"type": "x"}), "A" * 5000):
        r = verify_api(api, a["auditor"], ref)
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_REQUEST", (ref[:20], r.text)
    assert verify_api(api, a["submitter"], str(cp_b["id"])).status_code == 403


def test_the_beat_task_signs_every_sound_chain_and_files_it(ctx, client, api, worker, pg_url, keypair, tmp_path):
    tenant_with_decisions(ctx, client, "ckpt-beat")
    tenant_with_decisions(ctx, client, "ckpt-beat-broken")
    conn = superuser(pg_url)
    with conn.cursor() as cur:
        cur.execute("UPDATE audit_events SET actor = 'someone' WHERE tenant_id = 'ckpt-beat-broken' AND seq = 2")
    conn.close()
    settings = Settings(audit_signing_key=keypair["private"], audit_checkpoint_dir=tmp_path / "archive")
    with ctx.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(audit_checkpoints)).scalar_one()
        names = audit.tenants(conn)
    summary = cps.checkpoint_all(ctx.engine, settings)
    assert "ckpt-beat-broken" in summary["broken"] and "ckpt-beat" not in summary["broken"]
    assert summary["signed"] == len(names) - len(summary["broken"])
    with ctx.engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(audit_checkpoints)).scalar_one()
        stored = conn.execute(
            select(func.count()).where(audit_checkpoints.c.tenant_id == "ckpt-beat-broken")
        ).scalar_one()
    assert after - before == summary["signed"] and stored == 0
    filed = list((tmp_path / "archive" / "ckpt-beat").glob("*.json"))
    assert len(filed) == 1
    cp = cps.parse_file(filed[0].read_bytes())
    public = cps.load_verify_key(keypair["public"])
    with ctx.engine.connect() as conn:
        assert cps.verify_against(conn, "ckpt-beat", cp, public).ok
    # Without a key: nothing to do; the schedule has the entry only where a key is configured.
    assert cps.checkpoint_all(ctx.engine, Settings())["signed"] == 0
    assert "audit-checkpoint" not in celery_config(Settings())["beat_schedule"]
    entry = celery_config(settings)["beat_schedule"]["audit-checkpoint"]
    assert entry == {"task": T_AUDIT_CHECKPOINT, "schedule": 86_400.0}
