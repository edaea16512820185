"""API keys (issue 10, finding 12): list, revoke, rotate; revocation reaches every process within
a second (PostgreSQL and the embedded SQLite); last use written behind the requests; only
hashes stored, nothing of a key logged or audited."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, inspect, select, text

from moderation.access import KeyCache, create_key, list_keys, revoke_key, rotate_key
from moderation.access.auth import digest
from moderation.db.tables import api_keys, audit_events
from moderation.errors import ModerationError
from tests.support.http import auth
from tests.support.paths import REPO
from tests.support.processes import embedded_env, free_port, http_ok, stop_session
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def new_key(engine: Engine, tenant: str, roles: list[str] | None = None, label: str | None = None) -> str:
    with engine.begin() as conn:
        return create_key(conn, tenant, roles or ["submitter"], label)


def key_id(key: str) -> str:
    return key.split("_")[1]


def refused_within(get: Any, deadline_s: float, works: int = 200) -> float:
    """Call `get()` (an HTTP status) until it answers 401; returns the seconds that took, failing
    once `deadline_s` has passed (meanwhile the key may still work: status `works`)."""
    started = time.monotonic()
    while True:
        status = get()
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert status == works, status
        assert elapsed < deadline_s, f"the revoked key still worked {elapsed:.2f} s after its revocation"
        time.sleep(0.02)


# ---------------------------------------------------------------- list, revoke, rotate (CLI)


def test_keys_list_shows_metadata_and_never_the_key_or_its_hash(service_env, ctx) -> None:
    key = new_key(ctx.engine, "list-co", ["submitter", "auditor"], "ci uploader")
    r = cli("keys", "list", "--tenant", "list-co", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    (row,) = [x for x in rows if x["id"] == key_id(key)]
    assert row["prefix"] == f"mk_{key_id(key)}" and row["tenant_id"] == "list-co"
    assert row["roles"] == ["auditor", "submitter"] and row["label"] == "ci uploader"
    assert row["created_at"] and row["revoked_at"] is None and row["state"] == "active"
    assert set(row) == {
        "id",
        "prefix",
        "tenant_id",
        "roles",
        "label",
        "created_at",
        "last_used_at",
        "revoked_at",
        "state",
    }
    table = cli("keys", "list")
    assert table.returncode == 0 and key_id(key) in table.stdout
    for output in (r.stdout, table.stdout):
        assert key.split("_", 2)[2] not in output and digest(key) not in output


def test_keys_revoke_refuses_the_key(service_env, ctx, client) -> None:
    key = new_key(ctx.engine, "revoke-co")
    assert client.get("/v1/submissions/" + "0" * 32, headers=auth(key)).status_code == 404  # works, now cached
    r = cli("keys", "revoke", key_id(key))
    assert r.returncode == 0, r.stderr
    refused_within(lambda: client.get("/v1/submissions/" + "0" * 32, headers=auth(key)).status_code, 1.0, works=404)
    with ctx.engine.connect() as conn:
        (row,) = [k for k in list_keys(conn, "revoke-co") if k["id"] == key_id(key)]
    assert row["state"] == "revoked" and row["revoked_at"]
    assert cli("keys", "revoke", key_id(key)).returncode == 0  # again: no change, no error
    missing = cli("keys", "revoke", "0123456789ab")
    assert missing.returncode == 2 and "No API key" in missing.stderr


def test_keys_rotate_prints_only_the_new_key_with_the_same_tenant_roles_and_label(service_env, ctx, client) -> None:
    old = new_key(ctx.engine, "rotate-co", ["submitter", "auditor"], "uploader")
    r = cli("keys", "rotate", key_id(old))
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert r.stdout == new + "\n" and new.startswith("mk_") and new != old
    assert client.get("/v1/audit/verify", headers=auth(new)).status_code == 200
    refused_within(lambda: client.get("/v1/audit/verify", headers=auth(old)).status_code, 1.0)
    with ctx.engine.connect() as conn:
        keys = {k["id"]: k for k in list_keys(conn, "rotate-co")}
    assert keys[key_id(new)]["roles"] == ["auditor", "submitter"] and keys[key_id(new)]["label"] == "uploader"
    assert keys[key_id(old)]["state"] == "revoked"
    again = cli("keys", "rotate", key_id(old))  # a revoked key is not rotated a second time
    assert again.returncode == 2 and again.stdout == ""


def test_rotation_with_a_grace_period_keeps_the_old_key_until_it_ends(service_env, ctx, client) -> None:
    old = new_key(ctx.engine, "grace-co", ["auditor"])
    with ctx.engine.begin() as conn:
        new, view = rotate_key(conn, key_id(old), actor="test", grace_s=2.0)
    ended = time.monotonic() + 2.0
    assert view["id"] == key_id(new)
    with ctx.engine.connect() as conn:
        (row,) = [k for k in list_keys(conn, "grace-co") if k["id"] == key_id(old)]
    assert row["state"] == "expiring"
    # Both work during the grace period (the old one past the caches' next epoch read too)...
    time.sleep(0.6)
    assert client.get("/v1/audit/verify", headers=auth(old)).status_code == 200
    assert client.get("/v1/audit/verify", headers=auth(new)).status_code == 200
    # ...and the old one stops when it ends, without any further change in the database.
    while time.monotonic() < ended - 0.05:
        time.sleep(0.05)
    refused_within(lambda: client.get("/v1/audit/verify", headers=auth(old)).status_code, 0.5)
    assert client.get("/v1/audit/verify", headers=auth(new)).status_code == 200


def test_rotate_and_revoke_answer_not_found_for_another_tenants_key(service_env, ctx) -> None:
    theirs = new_key(ctx.engine, "victim-co")
    with ctx.engine.begin() as conn:
        for action in (
            lambda: revoke_key(conn, key_id(theirs), "test", tenant_id="attacker-co"),
            lambda: rotate_key(conn, key_id(theirs), "test", tenant_id="attacker-co"),
        ):
            with pytest.raises(ModerationError) as exc:
                action()
            assert exc.value.code == "NOT_FOUND"


# ---------------------------------------------------------------- across processes


def test_a_revoked_key_is_refused_by_another_api_process_within_a_second(service_env, ctx, procs) -> None:
    """PostgreSQL: the API in its own process caches the key; a revocation made elsewhere (this
    process, as the CLI or another replica would) reaches it through the access epoch."""
    key = new_key(ctx.engine, "xproc-co", ["auditor"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.command("api", ["-m", "moderation.cli", "api", "--port", str(port)], http_ok(f"{base}/healthz"), 60)
    with httpx.Client(base_url=base, timeout=5) as http:
        for _ in range(3):  # cached in that process now
            assert http.get("/v1/audit/verify", headers=auth(key)).status_code == 200
        with ctx.engine.begin() as conn:
            revoke_key(conn, key_id(key), actor="test")
        elapsed = refused_within(lambda: http.get("/v1/audit/verify", headers=auth(key)).status_code, 1.0)
    assert elapsed < 1.0


def test_a_revoked_key_is_refused_across_processes_on_embedded_sqlite(tmp_path: Path) -> None:
    """The embedded default (SQLite under var/): same guarantee, two processes on one file."""
    from moderation.db.engine import make_engine
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    var = tmp_path / "var"
    env = embedded_env(var, REPO)
    migrate = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "migrate"], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    settings = Settings(database_url=None, var_dir=var)
    assert settings.embedded
    upgrade(settings)  # a no-op: the CLI migrated the same file
    engine = make_engine(settings)
    key = new_key(engine, "sqlite-co", ["auditor"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "api", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(http_ok(f"{base}/healthz"), 60, what="API up", detail=log_path.read_text)
            with httpx.Client(base_url=base, timeout=5) as http:
                for _ in range(3):
                    assert http.get("/v1/audit/verify", headers=auth(key)).status_code == 200
                with engine.begin() as conn:
                    revoke_key(conn, key_id(key), actor="test")
                refused_within(lambda: http.get("/v1/audit/verify", headers=auth(key)).status_code, 1.0)
        finally:
            stop_session(api)
            engine.dispose()


# ---------------------------------------------------------------- last use


def test_last_use_is_written_behind_never_blocking_the_request(service_env, ctx) -> None:
    key = new_key(ctx.engine, "lastuse-co")
    cache = KeyCache(ctx.engine, ttl_s=30, poll_s=0.5, last_used_every_s=60)
    # Another transaction holds the key's row: a write on the request's path would wait for it.
    with ctx.engine.connect() as locker:
        tx = locker.begin()
        locker.execute(select(api_keys.c.id).where(api_keys.c.id == key_id(key)).with_for_update())
        started = time.monotonic()
        assert cache.authenticate(f"Bearer {key}").key_id == key_id(key)
        assert time.monotonic() - started < 0.5
        time.sleep(0.3)
        with ctx.engine.connect() as conn:
            assert conn.execute(select(api_keys.c.last_used_at).where(api_keys.c.id == key_id(key))).scalar() is None
        tx.rollback()

    def written() -> Any:
        with ctx.engine.connect() as conn:
            return conn.execute(select(api_keys.c.last_used_at).where(api_keys.c.id == key_id(key))).scalar()

    first = wait_until(written, 10, interval=0.05, what="last_used_at written")
    # At most once a minute per key and process: more requests note nothing new.
    for _ in range(20):
        cache.authenticate(f"Bearer {key}")
    assert cache.last_used.flush() == 0
    assert written() == first
    with ctx.engine.connect() as conn:
        (row,) = [k for k in list_keys(conn, "lastuse-co") if k["id"] == key_id(key)]
    assert row["last_used_at"] is not None


# ---------------------------------------------------------------- key material


def test_the_database_audit_log_and_logs_hold_no_key_material(service_env, ctx, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with ctx.engine.begin() as conn:
        first = create_key(conn, "material-co", ["submitter", "admin"], "m")
    with ctx.engine.begin() as conn:
        second, _ = rotate_key(conn, key_id(first), actor="test")
    with ctx.engine.begin() as conn:
        revoke_key(conn, key_id(second), actor="test")
    secrets_ = [k.split("_", 2)[2] for k in (first, second)]
    with ctx.engine.connect() as conn:
        dump = []
        for table in inspect(conn).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
        stored = dict(
            conn.execute(select(api_keys.c.id, api_keys.c.key_hash).where(api_keys.c.tenant_id == "material-co")).all()
        )
        events = conn.execute(
            select(audit_events.c.action, audit_events.c.body)
            .where(audit_events.c.tenant_id == "material-co")
            .order_by(audit_events.c.seq)  # chain order: without it PostgreSQL may answer in any order
        ).all()
    everything = "\n".join(dump)
    for key, secret in zip((first, second), secrets_, strict=True):
        assert key not in everything and secret not in everything
        assert key not in caplog.text and secret not in caplog.text
        assert stored[key_id(key)] == digest(key)
    assert [e.action for e in events] == ["key_created", "key_rotated", "key_revoked"]
    rotated = json.loads(events[1].body)["facts"]
    assert rotated["key_id"] == key_id(first) and rotated["new_key_id"] == key_id(second)


def test_the_chain_verifies_after_key_changes(service_env, ctx) -> None:
    from moderation import audit

    key = new_key(ctx.engine, "chain-keys-co")
    with ctx.engine.begin() as conn:
        new, _ = rotate_key(conn, key_id(key), actor="test", grace_s=60)
    with ctx.engine.begin() as conn:
        revoke_key(conn, key_id(key), actor="test")  # ends the grace period now
        revoke_key(conn, key_id(new), actor="test")
    with ctx.engine.connect() as conn:
        assert audit.verify(conn, "chain-keys-co").ok
