"""The `moderation` CLI against the real PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.services


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_keys_create_prints_only_the_key(service_env, client) -> None:
    r = run("keys", "create", "--tenant", "cli-co", "--role", "submitter", "--role", "auditor")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"mk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}\n", r.stdout)
    key = r.stdout.strip()
    assert client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {key}"}).json()["ok"] is True


def test_keys_create_refuses_unknown_roles(service_env) -> None:
    r = run("keys", "create", "--tenant", "cli-co", "--role", "root")
    assert r.returncode == 2 and r.stdout == ""


def test_keys_callback_secret_rotates_and_prints_only_the_secret(service_env, ctx) -> None:
    from moderation.callbacks import signing_secrets

    first = run("keys", "callback-secret", "--tenant", "cli-hooks")
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{40,}\n", first.stdout)
    second = run("keys", "callback-secret", "--tenant", "cli-hooks")
    assert "previous secret valid until" in second.stderr
    with ctx.engine.connect() as conn:
        # The new one signs; the one it replaced signs beside it during the grace period.
        assert signing_secrets(conn, "cli-hooks", ctx.settings) == [second.stdout.strip(), first.stdout.strip()]
