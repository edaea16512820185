"""`next`: what a moderator is served. A golden item at the configured rate (when the caller
asked for no particular queue), else the most urgent task they may take; once their exposure
budget for the hour is spent, non-graphic tasks come first."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from moderation.review import golden
from moderation.review.leases import next_task
from moderation.review.media import exposure
from moderation.review.reviewer import Reviewer


def serve_next(
    conn: Connection,
    reviewer: Reviewer,
    now: datetime,
    *,
    lease_s: float,
    golden_rate: float,
    budget: int,
    queue: str | None = None,
) -> dict[str, Any] | None:
    """Claim the next task for the reviewer (None: nothing to do). The result carries the
    reviewer's `exposure` so that the console can say when to take a break."""
    spent = exposure(conn, reviewer, budget, now)
    task = None
    if queue in (None, "", "default") and golden_rate > 0 and secrets.randbelow(1_000_000) < golden_rate * 1_000_000:
        task = golden.serve(conn, reviewer, now, lease_s)
    if task is None:
        task = next_task(conn, reviewer, now, lease_s, queue or None, prefer_non_graphic=spent.exceeded)
    if task is not None:
        task["exposure"] = spent.to_json()
    return task
