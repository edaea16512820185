"""Operational counts over the pipeline's tables, for the Prometheus gauges of `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from moderation.db.tables import as_utc, callback_deliveries, dead_letters, review_tasks, submissions, utcnow
from moderation.vocab import ACTIVE, CallbackStatus, ReviewStatus, SubmissionStatus

#: Submission statuses counted by `moderation_submissions_active`.
UNDECIDED = (*ACTIVE, SubmissionStatus.IN_REVIEW)
#: Callback statuses counted by `moderation_callbacks`.
UNDELIVERED = (CallbackStatus.PENDING, CallbackStatus.FAILED)


@dataclass(frozen=True)
class PipelineStats:
    by_status: dict[str, int]  # submissions not yet decided, by status
    oldest_active_s: float  # age of the oldest submission the pipeline still has to move
    open_review_tasks: int
    dead_letters: int
    callbacks: dict[str, int]  # deliveries not delivered, by status
    oldest_pending_callback_s: float


def pipeline_stats(engine: Engine) -> PipelineStats:
    """Read the counts in one connection (all tenants: operators' view)."""
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                select(submissions.c.status, func.count())
                .where(submissions.c.status.in_(UNDECIDED))
                .group_by(submissions.c.status)
            ).all()
        )
        oldest = conn.execute(
            select(func.min(submissions.c.updated_at)).where(submissions.c.status.in_(ACTIVE))
        ).scalar()
        open_tasks = conn.execute(select(func.count()).where(review_tasks.c.status == ReviewStatus.OPEN)).scalar()
        dead = conn.execute(select(func.count()).select_from(dead_letters)).scalar()
        hooks: dict[str, int] = dict(
            conn.execute(
                select(callback_deliveries.c.status, func.count())
                .where(callback_deliveries.c.status.in_(UNDELIVERED))
                .group_by(callback_deliveries.c.status)
            ).all()
        )
        oldest_hook = conn.execute(
            select(func.min(callback_deliveries.c.created_at)).where(
                callback_deliveries.c.status == CallbackStatus.PENDING
            )
        ).scalar()
    return PipelineStats(
        by_status={s: counts.get(s, 0) for s in UNDECIDED},
        oldest_active_s=_age_s(oldest),
        open_review_tasks=int(open_tasks or 0),
        dead_letters=int(dead or 0),
        callbacks={s: hooks.get(s, 0) for s in UNDELIVERED},
        oldest_pending_callback_s=_age_s(oldest_hook),
    )


def _age_s(stamp: datetime | None) -> float:
    """Seconds since `stamp` (0 when None); SQLite hands back naive UTC."""
    if stamp is None:
        return 0.0
    return max((utcnow() - as_utc(stamp)).total_seconds(), 0.0)
