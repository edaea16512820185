"""Review helpers: moderators' keys, submissions that end in review through the real pipeline,
and tasks seeded in bulk through the same code that opens them after an automated decision."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from moderation.access.keys import create_key
from moderation.analyzers.base import Finding
from moderation.db.tables import submissions, utcnow
from moderation.pipeline.finalize import finalize_many
from moderation.pipeline.findings import Due
from tests.support.http import auth


def review_keys(ctx: Any, tenant: str) -> dict[str, str]:
    """A tenant's staff: two moderators, a senior, a restricted reviewer, a submitter, an auditor, an admin."""
    with ctx.engine.begin() as conn:
        return {
            "mod1": create_key(conn, tenant, ["moderator"], label="Mo One"),
            "mod2": create_key(conn, tenant, ["moderator"], label="Mo Two"),
            "senior": create_key(conn, tenant, ["senior_moderator"], label="Senior"),
            "restricted": create_key(conn, tenant, ["restricted_reviewer"], label="Restricted"),
            "submitter": create_key(conn, tenant, ["submitter"]),
            "auditor": create_key(conn, tenant, ["auditor"]),
            "admin": create_key(conn, tenant, ["admin"]),
        }


def key_id(key: str) -> str:
    return key.split("_")[1]


def seed_tasks(
    ctx: Any, tenant: str, scores: list[dict[str, float]], *, policy: str = "test-cascade", age_s: float = 0
) -> list[str]:
    """One submission per score dict, decided by `finalize_many` as the worker would after a
    `caption` stage that found those scores (so each opens the task the policy asks for).
    Returns the submission ids."""
    now = utcnow() - timedelta(seconds=age_s)
    rows = []
    for _ in scores:
        sha = secrets.token_hex(32)
        rows.append(
            {
                "id": secrets.token_hex(16),
                "tenant_id": tenant,
                "source": "http",
                "sha256": sha,
                "phash": "0" * 16,
                "pdq": "0" * 64,
                "format": "PNG",
                "width": 64,
                "height": 64,
                "frames": 1,
                "byte_size": 100,
                "uploader_id": "seeded-user",
                "priority": "normal",
                "policy_id": policy,
                "status": "analyzing",
                "attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
    with ctx.engine.begin() as conn:
        conn.execute(submissions.insert(), rows)
        subs = conn.execute(submissions.select().where(submissions.c.id.in_([r["id"] for r in rows]))).all()
        by_id = {s.id: s for s in subs}
        due = []
        for r, s in zip(rows, scores, strict=True):
            f = Finding(
                "caption", "test-1", "caption", scores=s, confidence=0.95, covered=list(ctx.policies[policy].categories)
            )
            due.append(Due(by_id[r["id"]], ctx.policies[policy], [f], [f], []))
        finalize_many(ctx, conn, due)
    return [r["id"] for r in rows]


def next_task(client: Any, key: str, queue: str | None = None) -> Any:
    params = {"queue": queue} if queue else {}
    return client.post("/v1/review/next", headers=auth(key), params=params)


def decide(client: Any, key: str, task: dict[str, Any], **body: Any) -> Any:
    body.setdefault("claim_token", task["claim"]["token"])
    return client.post(f"/v1/review/tasks/{task['id']}/decision", headers=auth(key), json=body)
