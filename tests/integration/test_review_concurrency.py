"""Eight moderators work one queue in parallel through the API: every task is decided exactly
once, no claim is handed to two people at once, and the claims some of them abandon come back
when their leases run out. On the real PostgreSQL (FOR UPDATE SKIP LOCKED), and on the embedded
SQLite default (serialised writers) with fewer tasks."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from moderation.db.tables import decisions, review_tasks
from tests.support.http import auth
from tests.support.review import decide, next_task, review_keys, seed_tasks

pytestmark = pytest.mark.services

MODERATORS = 8


def work_the_queue(client: Any, keys: list[str], abandon_every: int, deadline_s: float) -> dict[str, Any]:
    """Each key loops `next` → decide until the queue is empty for a while; every
    `abandon_every`-th claim is dropped without a decision (the moderator walked away)."""
    lock = threading.Lock()
    claims: list[tuple[str, str, float, float]] = []  # task, key, claimed at, lease end (monotonic)
    decided: Counter[str] = Counter()
    abandoned: set[str] = set()
    errors: list[str] = []

    def moderator(key: str) -> None:
        n, empty_since = 0, None
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = next_task(client, key)
            if r.status_code == 204:
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since > 4:  # longer than the test lease: nothing will come back
                    return
                time.sleep(0.2)
                continue
            if r.status_code != 200:
                errors.append(f"next {r.status_code} {r.text[:200]}")
                return
            empty_since = None
            task = r.json()
            now = time.monotonic()
            with lock:
                claims.append((task["id"], key, now, now + 2.0))
            n += 1
            if n % abandon_every == 0:
                with lock:
                    abandoned.add(task["id"])
                continue
            d = decide(client, key, task, action="allow", reason="checked")
            if d.status_code == 200:
                with lock:
                    decided[task["id"]] += 1
            else:
                errors.append(f"decide {d.status_code} {d.text[:200]}")

    threads = [threading.Thread(target=moderator, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"claims": claims, "decided": decided, "abandoned": abandoned, "errors": errors}


def check(result: dict[str, Any], task_ids: set[str]) -> None:
    assert result["errors"] == []
    decided: Counter[str] = result["decided"]
    assert set(decided) == task_ids, f"{len(task_ids - set(decided))} tasks never decided"
    assert max(decided.values()) == 1
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for task, _key, at, _end in result["claims"]:
        by_task[task].append((at, _end))
    for task, spans in by_task.items():
        if len(spans) > 1:
            # Claimed again only after an abandoned lease ran out.
            assert task in result["abandoned"], f"{task} handed out twice without being abandoned"
    assert result["abandoned"], "the run abandoned no claim: expiry went untested"
    assert result["abandoned"] <= set(decided)  # every abandoned task came back and was decided


def staff_keys(ctx: Any, tenant: str, n: int) -> list[str]:
    from moderation.access.keys import create_key

    with ctx.engine.begin() as conn:
        return [create_key(conn, tenant, ["moderator"], label=f"mod {i}") for i in range(n)]


def test_eight_moderators_on_postgresql(client, ctx, monkeypatch) -> None:
    tenant = "review-crowd"
    review_keys(ctx, tenant)
    keys = staff_keys(ctx, tenant, MODERATORS)
    sids = seed_tasks(ctx, tenant, [{"spam": 0.70 + (i % 15) / 100} for i in range(300)])
    monkeypatch.setattr(ctx.settings, "review_lease_s", 2.0)
    monkeypatch.setattr(ctx.settings, "golden_rate", 0.0)
    with ctx.engine.connect() as conn:
        task_ids = set(conn.execute(select(review_tasks.c.id).where(review_tasks.c.submission_id.in_(sids))).scalars())
    assert len(task_ids) == 300
    result = work_the_queue(client, keys, abandon_every=25, deadline_s=240)
    check(result, task_ids)
    with ctx.engine.connect() as conn:
        per_sub = conn.execute(
            select(decisions.c.submission_id, func.count())
            .where(decisions.c.submission_id.in_(sids), decisions.c.automated.is_(False))
            .group_by(decisions.c.submission_id)
        ).all()
        assert len(per_sub) == 300 and {n for _, n in per_sub} == {1}
        statuses = set(conn.execute(select(review_tasks.c.status).where(review_tasks.c.id.in_(task_ids))).scalars())
        assert statuses == {"done"}
    verify = client.get("/v1/audit/verify", headers=auth(review_keys(ctx, tenant)["auditor"])).json()
    assert verify["ok"] is True


def test_moderators_on_the_embedded_sqlite_default(tmp_path: Path, ctx: Any) -> None:
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.db.migrate import upgrade
    from moderation.pipeline.context import Context
    from moderation.settings import Settings

    settings = Settings()
    for name in ("database_url", "redis_url", "broker_url", "cache_url", "ratelimit_url"):
        setattr(settings, name, None)
    settings.var_dir = tmp_path / "var"
    settings.review_lease_s = 2.0
    settings.golden_rate = 0.0
    assert settings.db_url.startswith("sqlite")
    upgrade(settings)
    lite = Context.build(settings)
    review_keys(lite, "solo")
    keys = staff_keys(lite, "solo", 4)
    sids = seed_tasks(lite, "solo", [{"spam": 0.75} for _ in range(60)], policy="test-cascade")
    with lite.engine.connect() as conn:
        task_ids = set(conn.execute(select(review_tasks.c.id).where(review_tasks.c.submission_id.in_(sids))).scalars())
    with TestClient(create_app(settings, lite)) as client:
        result = work_the_queue(client, keys, abandon_every=10, deadline_s=120)
    check(result, task_ids)
