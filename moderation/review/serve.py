"""`next`: what a moderator is served. A golden item at the configured rate (when the caller
asked for no particular queue), else the most urgent task they may take; once their exposure
budget for the hour is spent, non-graphic tasks come first."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from moderation.intake.text import check_text
from moderation.policy import Policy
from moderation.review import golden
from moderation.review.leases import next_task
from moderation.review.media import exposure
from moderation.review.reviewer import Reviewer
from moderation.settings import Settings


def serve_next(
    conn: Connection,
    reviewer: Reviewer,
    now: datetime,
    *,
    lease_s: float,
    golden_rate: float,
    budget: int,
    queue: str | None = None,
    exclude: str | None = None,
    policies: dict[str, Policy] | None = None,
) -> dict[str, Any] | None:
    """Claim the next task for the reviewer (None: nothing to do). The result carries the
    reviewer's `exposure` so that the console can say when to take a break."""
    check_text("queue", queue, 64)
    spent = exposure(conn, reviewer, budget, now)
    task = None
    if (
        not exclude
        and queue in (None, "", "default")
        and golden_rate > 0
        and secrets.randbelow(1_000_000) < golden_rate * 1_000_000
    ):
        task = golden.serve(conn, reviewer, now, lease_s, policies)
    if task is None:
        task = next_task(
            conn, reviewer, now, lease_s, queue or None, prefer_non_graphic=spent.exceeded, exclude=exclude
        )
    if task is not None:
        task["exposure"] = spent.to_json()
    return task


def serve_for(
    conn: Connection,
    reviewer: Reviewer,
    settings: Settings,
    policies: dict[str, Policy],
    now: datetime,
    queue: str | None = None,
    exclude: str | None = None,
) -> dict[str, Any] | None:
    """`serve_next` with the deployment's lease, golden rate and exposure budget."""
    return serve_next(
        conn,
        reviewer,
        now,
        lease_s=settings.review_lease_s,
        golden_rate=settings.golden_rate,
        budget=settings.exposure_budget_per_hour,
        queue=queue,
        exclude=exclude,
        policies=policies,
    )
