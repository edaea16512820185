"""A blob whose bytes were swapped after upload fails the analysis closed (to review), never
judging the planted bytes (issue 10, finding 4)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from moderation.db.tables import submissions
from moderation.pipeline.analyze import run_stage
from tests.support.blobs import plant
from tests.support.http import submit, wait_final
from tests.support.images import picture

pytestmark = pytest.mark.services


def test_a_swapped_blob_fails_the_stage_closed(client, keys, ctx, worker) -> None:
    body = submit(client, keys["submitter"], picture(5301), policy="hash-only")
    wait_final(client, keys["submitter"], body["id"])
    with ctx.engine.connect() as conn:
        row = conn.execute(select(submissions).where(submissions.c.id == body["id"])).one()
    plant(ctx.blobs, row.sha256, picture(5302))  # a valid image, but not this one
    policy = ctx.policies["test-cascade"]
    finding = run_stage(ctx, row, policy, policy.analyzer_stages[0])
    assert finding.error is not None and "BLOB_CORRUPT" in finding.error  # an error finding: review
    from moderation.policy import evaluate

    assert evaluate(policy, [finding]).action == "review"
