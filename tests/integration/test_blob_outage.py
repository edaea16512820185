"""The blob store unreachable (S3 down, a wrong endpoint): nothing is accepted without its image,
and analysis waits for the store instead of judging, or failing, the item (issue 14)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from moderation.api.routers import ops
from moderation.db.tables import media_reveals, submissions
from moderation.errors import TransientAnalyzerError
from moderation.intake.s3blobs import S3BlobStore
from moderation.pipeline.analyze import run_stage
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.review import next_task, review_keys

pytestmark = pytest.mark.services

DOWN = S3BlobStore("unreachable", endpoint_url="http://127.0.0.1:9", timeout_s=0.5, max_attempts=1)


def rows(ctx) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(submissions)).scalar_one())


def test_an_upload_while_the_store_is_down_is_503_and_stores_nothing(client, keys, ctx, monkeypatch) -> None:
    before = rows(ctx)
    monkeypatch.setattr(ctx, "blobs", DOWN)
    r = client.post("/v1/submissions", headers=auth(keys["submitter"]), files={"file": ("x.png", picture(5401))})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE" and "blob store" in r.json()["error"]["message"]
    assert rows(ctx) == before  # no row names an image that was never stored
    ops._cache.clear()  # readiness is cached for probe_cache_s: read it now, and forget it after
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["blobs"].startswith("unavailable")
    ops._cache.clear()


def test_analysis_while_the_store_is_down_is_retried_not_decided(client, keys, ctx, worker, monkeypatch) -> None:
    body = submit(client, keys["submitter"], picture(5402), policy="hash-only")
    wait_final(client, keys["submitter"], body["id"])
    with ctx.engine.connect() as conn:
        row = conn.execute(select(submissions).where(submissions.c.id == body["id"])).one()
    policy = ctx.policies["test-cascade"]
    monkeypatch.setattr(ctx, "blobs", DOWN)
    with pytest.raises(TransientAnalyzerError) as exc:  # the task retries with backoff
        run_stage(ctx, row, policy, policy.analyzer_stages[0])
    assert not exc.value.charge_attempt  # not the item's fault: its attempts are given back
    monkeypatch.undo()
    assert run_stage(ctx, row, policy, policy.analyzer_stages[0]).error is None  # the store is back


def test_a_reveal_the_store_cannot_serve_is_not_recorded(client, ctx, worker, monkeypatch) -> None:
    """The original asked for while the store is down: a 503 JSON, and no reveal in the audit log
    nor against the moderator's exposure budget (nothing was shown)."""
    staff = review_keys(ctx, "outageco")
    sid = submit(client, staff["submitter"], picture(5403), policy="test-cascade", caption="violence_gore=0.62")["id"]
    assert wait_final(client, staff["submitter"], sid)["status"] == "in_review"
    task = next_task(client, staff["mod1"]).json()
    assert task["submission_id"] == sid
    url = f"/v1/review/tasks/{task['id']}/image"

    def reveals() -> int:
        with ctx.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(media_reveals).where(media_reveals.c.submission_id == sid)
                ).scalar_one()
            )

    monkeypatch.setattr(ctx, "blobs", DOWN)
    r = client.get(url, params={"variant": "original"}, headers=auth(staff["mod1"]))
    assert r.status_code == 503 and r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert reveals() == 0
    monkeypatch.undo()
    r = client.get(url, params={"variant": "original"}, headers=auth(staff["mod1"]))
    assert r.status_code == 200 and r.content == picture(5403) and reveals() == 1
