"""Queue-side ingest: a platform publishes a message instead of calling HTTP."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy import select

from moderation.client import QueueProducer
from moderation.db.tables import audit_events, dead_letters, submissions
from tests.support.images import picture
from tests.support.services import REDIS_URL
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def by_external(ctx: Any, tenant: str, external_id: str) -> Any:
    with ctx.engine.connect() as conn:
        return conn.execute(
            select(submissions).where(submissions.c.tenant_id == tenant, submissions.c.external_id == external_id)
        ).first()


def test_queue_submissions_are_validated_and_decided(ctx, keys, procs) -> None:
    worker = procs.worker()
    producer = QueueProducer(REDIS_URL)
    producer.submit(keys["submitter"], "q-1", data=picture(700), policy="hash-only", caption="from the queue")
    stored = ctx.blobs.put(picture(701))
    producer.submit(keys["submitter"], "q-2", blob_sha256=stored, policy="hash-only")
    producer.submit(keys["submitter"], "q-1", data=picture(700), policy="hash-only")  # duplicate: same submission

    for ext in ("q-1", "q-2"):
        row = wait_until(
            lambda ext=ext: (r := by_external(ctx, "acme", ext)) and r.status == "decided" and r,
            90,
            what=f"{ext} decided",
        )
        assert row.source == "queue"
    with ctx.engine.connect() as conn:
        n = conn.execute(select(submissions.c.id).where(submissions.c.external_id == "q-1")).all()
    assert len(n) == 1

    # Bad messages are recorded, never retried, and never crash the worker.
    producer.publisher.send(
        "moderation.submit",
        [
            {
                "api_key": keys["submitter"],
                "external_id": "q-bad",
                "image_b64": base64.b64encode(b"not an image").decode(),
            }
        ],
        "ingest.external",
    )
    producer.publisher.send(
        "moderation.submit",
        [{"api_key": "mk_wrong", "external_id": "q-nokey", "image_b64": base64.b64encode(picture(702)).decode()}],
        "ingest.external",
    )
    producer.publisher.send(
        "moderation.submit", [{"api_key": keys["submitter"], "external_id": "q-none"}], "ingest.external"
    )

    def letters() -> list[Any]:
        with ctx.engine.connect() as conn:
            return conn.execute(select(dead_letters).where(dead_letters.c.task == "submit")).all()

    rows = wait_until(lambda: len(letters()) >= 3 and letters(), 60, what="rejections recorded")
    errors = {r.payload.get("external_id"): r.error for r in rows}
    assert errors["q-bad"].startswith("UNSUPPORTED_MEDIA_TYPE")
    assert errors["q-nokey"].startswith("UNAUTHENTICATED")
    assert errors["q-none"].startswith("INVALID_MESSAGE")
    assert all("api_key" not in r.payload and "image_b64" not in r.payload for r in rows)
    assert by_external(ctx, "acme", "q-bad") is None
    with ctx.engine.connect() as conn:
        rejected = (
            conn.execute(
                select(audit_events.c.body).where(
                    audit_events.c.tenant_id == "acme", audit_events.c.action == "rejected"
                )
            )
            .scalars()
            .all()
        )
    assert any("q-bad" in b for b in rejected)
    assert worker.p.poll() is None
