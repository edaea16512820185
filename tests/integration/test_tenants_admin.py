"""Tenants and their allowed policies (issue 10, finding 12), the `tenants` CLI, and the admin
API: an admin manages its own tenant's keys and policies, never another tenant's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select

from moderation.access import create_key, create_tenant, get_tenant, update_tenant
from moderation.db.tables import audit_events
from moderation.errors import ModerationError
from moderation.pipeline.accept import SubmissionRequest, accept
from tests.support.http import auth
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def post_image(client: Any, key: str, data: bytes, **fields: str) -> Any:
    return client.post("/v1/submissions", headers=auth(key), files={"file": ("x.jpg", data)}, data=fields)


def key_id(key: str) -> str:
    return key.split("_")[1]


@pytest.fixture(scope="module")
def admins(ctx: Any) -> dict[str, str]:
    """An admin key in each of two tenants made with `tenants create` semantics."""
    with ctx.engine.begin() as conn:
        for t in ("adm-a", "adm-b"):
            create_tenant(conn, t, list(ctx.policies), ctx.settings.default_policy, name=t.upper(), actor="test")
        return {
            "a": create_key(conn, "adm-a", ["admin"]),
            "a_submitter": create_key(conn, "adm-a", ["submitter"]),
            "b": create_key(conn, "adm-b", ["admin"]),
        }


# ---------------------------------------------------------------- the allow-list (regression)


def test_a_submitter_allowed_only_default_cannot_pick_hash_only(service_env, ctx, client, images) -> None:
    """Before: any submitter could name any policy, `hash-only` (no model at all) included."""
    with ctx.engine.begin() as conn:
        create_tenant(conn, "only-default", list(ctx.policies), "default", actor="test")
        key = create_key(conn, "only-default", ["submitter"])
        tenant = get_tenant(conn, "only-default")
    assert tenant["allowed_policies"] == ["default"] and tenant["default_policy"] is None
    r = post_image(client, key, images["img1"], policy="hash-only")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "POLICY_NOT_ALLOWED"
    assert post_image(client, key, images["img2"], policy="default").status_code == 202
    assert post_image(client, key, images["img3"]).status_code == 202


def test_the_queue_side_path_checks_the_allow_list_too(service_env, ctx, images) -> None:
    with ctx.engine.begin() as conn:
        create_tenant(conn, "only-default-q", list(ctx.policies), "default", actor="test")
    req = SubmissionRequest(
        tenant_id="only-default-q", actor="queue:x", external_id="q-1", policy="hash-only", source="queue"
    )
    with pytest.raises(ModerationError) as exc:
        accept(ctx, req, images["img4"])
    assert exc.value.code == "POLICY_NOT_ALLOWED" and exc.value.http_status == 403


def test_tenants_without_an_allow_list_keep_every_policy(service_env, ctx, client, images) -> None:
    """Tenants made before allow-lists (and by `keys create`) have NULL: all shipped policies."""
    with ctx.engine.begin() as conn:
        key = create_key(conn, "legacy-co", ["submitter"])
        assert get_tenant(conn, "legacy-co")["allowed_policies"] is None
    assert post_image(client, key, images["img5"], policy="hash-only").status_code == 202


def test_a_changed_allow_list_applies_within_a_second(service_env, ctx, client, images) -> None:
    with ctx.engine.begin() as conn:
        create_tenant(conn, "widened", list(ctx.policies), "default", actor="test")
        key = create_key(conn, "widened", ["submitter"])
    assert post_image(client, key, images["img6"], policy="hash-only").status_code == 403
    with ctx.engine.begin() as conn:
        update_tenant(conn, "widened", list(ctx.policies), allowed_policies=["default", "hash-only"], actor="test")
    wait_until(
        lambda: post_image(client, key, images["img7"], policy="hash-only").status_code == 202,
        1.0,
        interval=0.05,
        what="the widened allow-list applied",
    )
    # Its default policy is always allowed, listed or not.
    with ctx.engine.begin() as conn:
        view = update_tenant(conn, "widened", list(ctx.policies), default_policy="hash-only", actor="test")
        view = update_tenant(conn, "widened", list(ctx.policies), allowed_policies=["default"], actor="test")
    assert view["allowed_policies"] == ["default", "hash-only"]


# ---------------------------------------------------------------- CLI


def test_tenants_cli_create_list_update_and_audit(service_env, ctx) -> None:
    r = cli("tenants", "create", "cli-tenant", "--name", "CLI Tenant", "--allowed-policy", "hash-only")
    assert r.returncode == 0, r.stderr
    assert "allowed_policies=hash-only" in r.stdout
    assert cli("tenants", "create", "cli-tenant").returncode == 2  # exists
    bad = cli("tenants", "create", "cli-bad", "--allowed-policy", "no-such-policy")
    assert bad.returncode == 2 and "no-such-policy" in bad.stderr
    listed = [json.loads(line) for line in cli("tenants", "list", "--json").stdout.splitlines()]
    (row,) = [t for t in listed if t["id"] == "cli-tenant"]
    assert row["name"] == "CLI Tenant" and row["allowed_policies"] == ["hash-only"] and row["default_policy"] is None
    assert "callback_secret" not in row
    up = cli("tenants", "update", "cli-tenant", "--default-policy", "default", "--allowed-policy", "test-cascade")
    assert up.returncode == 0, up.stderr
    with ctx.engine.connect() as conn:
        t = get_tenant(conn, "cli-tenant")
        events = conn.execute(
            select(audit_events.c.action, audit_events.c.body).where(audit_events.c.tenant_id == "cli-tenant")
        ).all()
    assert t["default_policy"] == "default" and t["allowed_policies"] == ["default", "test-cascade"]
    assert [e.action for e in events] == ["tenant_created", "tenant_updated"]
    changes = json.loads(events[1].body)["facts"]["changes"]
    assert changes["default_policy"] == {"from": None, "to": "default"}
    assert cli("tenants", "update", "cli-tenant", "--all-policies").returncode == 0
    with ctx.engine.connect() as conn:
        assert get_tenant(conn, "cli-tenant")["allowed_policies"] is None
    assert cli("tenants", "update", "nobody-here", "--name", "x").returncode == 2


# ---------------------------------------------------------------- admin API


def test_admin_api_keys_list_create_revoke_rotate(service_env, ctx, client, admins) -> None:
    a = auth(admins["a"])
    r = client.post("/v1/admin/keys", headers=a, json={"roles": ["submitter", "auditor"], "label": "new one"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["key"].startswith(f"mk_{made['id']}_") and made["tenant_id"] == "adm-a"
    assert made["roles"] == ["auditor", "submitter"] and made["state"] == "active"
    assert client.get("/v1/audit/verify", headers=auth(made["key"])).status_code == 200

    listed = client.get("/v1/admin/keys", headers=a).json()["keys"]
    assert {k["tenant_id"] for k in listed} == {"adm-a"}
    assert made["id"] in {k["id"] for k in listed}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert made["key"] not in json.dumps(listed)

    rot = client.post(f"/v1/admin/keys/{made['id']}/rotate", headers=a, json={"grace_s": 0})
    assert rot.status_code == 201, rot.text
    assert rot.json()["replaces"] == made["id"] and rot.json()["roles"] == made["roles"]
    new_key = rot.json()["key"]
    wait_until(lambda: client.get("/v1/audit/verify", headers=auth(made["key"])).status_code == 401, 1.0, interval=0.05)
    assert client.get("/v1/audit/verify", headers=auth(new_key)).status_code == 200

    rev = client.post(f"/v1/admin/keys/{key_id(new_key)}/revoke", headers=a)
    assert rev.status_code == 200 and rev.json()["state"] == "revoked"
    wait_until(lambda: client.get("/v1/audit/verify", headers=auth(new_key)).status_code == 401, 1.0, interval=0.05)


def test_admin_api_never_reaches_another_tenant(service_env, ctx, client, admins) -> None:
    theirs = key_id(admins["b"])
    a = auth(admins["a"])
    for path in (f"/v1/admin/keys/{theirs}/revoke", f"/v1/admin/keys/{theirs}/rotate"):
        r = client.post(path, headers=a)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", r.text
    assert client.post("/v1/admin/keys/0123456789ab/revoke", headers=a).status_code == 404
    assert theirs not in json.dumps(client.get("/v1/admin/keys", headers=a).json())
    assert client.get("/v1/admin/tenant", headers=a).json()["id"] == "adm-a"
    # B's key still works: nothing was revoked.
    assert client.get("/v1/admin/keys", headers=auth(admins["b"])).status_code == 200


def test_admin_api_needs_the_admin_role_and_known_roles(service_env, client, admins) -> None:
    s = auth(admins["a_submitter"])
    assert client.get("/v1/admin/keys", headers=s).status_code == 403
    assert client.post("/v1/admin/keys", headers=s, json={"roles": ["admin"]}).status_code == 403
    assert client.patch("/v1/admin/tenant", headers=s, json={"allowed_policies": None}).status_code == 403
    assert client.get("/v1/admin/keys").status_code == 401
    a = auth(admins["a"])
    bodies: list[dict[str, Any]] = [{"roles": ["root"]}, {"roles": []}, {"roles": ["submitter"], "tenant_id": "adm-b"}]
    for body in bodies:
        r = client.post("/v1/admin/keys", headers=a, json=body)
        assert r.status_code == 422, (body, r.text)


def test_admin_api_reads_and_patches_its_tenant(service_env, ctx, client, admins, images) -> None:
    a = auth(admins["a"])
    t = client.get("/v1/admin/tenant", headers=a).json()
    assert t == {**t, "id": "adm-a", "name": "ADM-A", "default_policy": None, "allowed_policies": ["default"]}
    r = client.patch("/v1/admin/tenant", headers=a, json={"allowed_policies": ["default", "nope"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_POLICY"
    r = client.patch("/v1/admin/tenant", headers=a, json={"default_policy": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_POLICY"
    r = client.patch("/v1/admin/tenant", headers=a, json={"allowed_policies": []})
    assert r.status_code == 422
    sub = admins["a_submitter"]
    assert post_image(client, sub, images["img8"], policy="hash-only").status_code == 403
    r = client.patch("/v1/admin/tenant", headers=a, json={"allowed_policies": ["default", "hash-only"]})
    assert r.status_code == 200 and r.json()["allowed_policies"] == ["default", "hash-only"]
    wait_until(
        lambda: post_image(client, sub, images["img9"], policy="hash-only").status_code == 202, 1.0, interval=0.05
    )
    r = client.patch("/v1/admin/tenant", headers=a, json={"allowed_policies": None})
    assert r.status_code == 200 and r.json()["allowed_policies"] is None
    # Tenant B is untouched by A's changes.
    assert client.get("/v1/admin/tenant", headers=auth(admins["b"])).json()["allowed_policies"] == ["default"]
