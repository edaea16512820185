"""`moderation audit submit-dsa` against a local server that applies the Transparency Database's
public validation rules (tests/support/tdb_server.py, written from the documented rules without
reading our statement builder): 1,000 decisions in batches of at most 100, a planted invalid
statement found and dead-lettered without losing the rest, 429 and 5xx retried, and a rerun that
sends nothing twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from moderation.audit import dsa_submit
from moderation.db.tables import audit_events, dsa_ledger
from tests.support.paths import REPO
from tests.support.review import review_keys, seed_tasks
from tests.support.tdb_server import FakeTDB

pytestmark = pytest.mark.services

TENANT = "dsa-co"


def test_a_thousand_statements_one_planted_bad_one_and_a_rerun(
    ctx: Any, service_env: dict[str, str], tmp_path: Path
) -> None:
    review_keys(ctx, TENANT)
    seed_tasks(ctx, TENANT, [{"scam_fraud": 0.9 + (i % 10) / 100} for i in range(1000)])
    statements = list(dsa_submit.pending(ctx.engine, TENANT, ctx.policies))
    assert len(statements) == 1000
    planted = statements[437]["puid"]
    statements[437] = {**statements[437], "category": "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"}
    with FakeTDB() as tdb:
        tdb.rate_limit_first_n = 1
        tdb.fail_5xx_first_n = 1
        waits: list[float] = []
        outcome = dsa_submit.submit(ctx.engine, TENANT, statements, tdb.url, tdb.token, sleep=waits.append)
        assert outcome.sent == 999 and outcome.rejected == 1
        assert len(tdb.stored) == 999 and planted not in tdb.stored
        posts = [r for r in tdb.requests if r.endpoint.endswith("/statements")]
        assert posts and max(r.statements for r in posts) <= 100
        assert sum(r.statements for r in posts if r.status == 201) == 999
        assert {r.status for r in posts} >= {201, 422, 429, 503}
        assert waits  # the 429 and the 503 were waited out
        with ctx.engine.connect() as conn:
            rejected = conn.execute(
                select(dsa_ledger).where(dsa_ledger.c.tenant_id == TENANT, dsa_ledger.c.status == "rejected")
            ).all()
            assert [r.puid for r in rejected] == [planted] and "category" in (rejected[0].error or "")
            assert (
                conn.execute(
                    select(func.count()).where(
                        audit_events.c.tenant_id == TENANT, audit_events.c.action == "statement_submitted"
                    )
                ).scalar_one()
                == 999
            )

        # A rerun through the CLI sends nothing twice (the ledger holds every PUID, the refused one too).
        token = tmp_path / "token"
        token.write_text(tdb.token)
        before = len(tdb.requests)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "moderation.cli",
                "audit",
                "submit-dsa",
                "--tenant",
                TENANT,
                "--endpoint",
                tdb.url,
                "--token-file",
                str(token),
            ],
            env=service_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "sent 0" in done.stderr and len(tdb.requests) == before
        assert len(tdb.stored) == 999
