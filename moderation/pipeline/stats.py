"""Operational counts over the pipeline's tables, for the Prometheus gauges of `/metrics`: among
them the age of the oldest work waiting for each queue, the signal to autoscale workers on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from moderation.db.tables import (
    as_utc,
    callback_deliveries,
    dead_letters,
    decisions,
    findings,
    review_tasks,
    submissions,
    utcnow,
)
from moderation.pipeline.context import Context
from moderation.pipeline.findings import stored_findings
from moderation.queue import Q_DECIDE, Q_INGEST
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
        open_tasks = conn.execute(select(func.count()).where(review_tasks.c.status != ReviewStatus.DONE)).scalar()
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


@dataclass(frozen=True)
class Activity:
    """What the pipeline did in the last `window_s`: decisions by action, and how long items took
    from upload to each stage's finding and to the automated decision (p50, p99)."""

    window_s: float
    decisions: dict[str, int]
    stage_latency_s: dict[str, tuple[float, float]]  # stage -> (p50, p99); "decision" for the decision


def recent_activity(engine: Engine, window_s: float = 300.0, sample: int = 2000) -> Activity:
    """Read the last `window_s` (the newest `sample` rows of each kind, so a scrape stays cheap)."""
    since = utcnow() - timedelta(seconds=window_s)
    with engine.connect() as conn:
        by_action: dict[str, int] = dict(
            conn.execute(
                select(decisions.c.action, func.count())
                .where(decisions.c.decided_at > since)
                .group_by(decisions.c.action)
            ).all()
        )
        stage_rows = conn.execute(
            select(findings.c.stage, findings.c.created_at, submissions.c.created_at.label("received"))
            .join(submissions, submissions.c.id == findings.c.submission_id)
            .where(findings.c.created_at > since)
            .order_by(findings.c.created_at.desc())
            .limit(sample)
        ).all()
        decision_rows = conn.execute(
            select(decisions.c.decided_at, submissions.c.created_at.label("received"))
            .join(submissions, submissions.c.id == decisions.c.submission_id)
            .where(decisions.c.decided_at > since, decisions.c.automated.is_(True))
            .order_by(decisions.c.decided_at.desc())
            .limit(sample)
        ).all()
    spans: dict[str, list[float]] = {}
    for r in stage_rows:
        spans.setdefault(str(r.stage), []).append((as_utc(r.created_at) - as_utc(r.received)).total_seconds())
    for d in decision_rows:
        spans.setdefault("decision", []).append((as_utc(d.decided_at) - as_utc(d.received)).total_seconds())
    return Activity(window_s, by_action, {k: (_quantile(v, 0.5), _quantile(v, 0.99)) for k, v in spans.items()})


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return max(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 0.0)


def next_queue(ctx: Context, policy_id: str, stages_done: set[str]) -> str:
    """The queue whose work a submission past ingest waits for: its policy's first analyzer stage
    without a finding, else `decide`."""
    policy = ctx.policies.get(policy_id)
    nxt = next((st for st in (policy.analyzer_stages if policy else []) if st.stage not in stages_done), None)
    return nxt.queue if nxt else Q_DECIDE


def queue_ages(ctx: Context, engine: Engine, sample: int = 500) -> dict[str, float]:
    """Per queue, the age in seconds of the oldest submission waiting for that queue's work (time
    since its last progress). Queued ones wait for `ingest`: its age is one index lookup. Analyzing
    ones wait for their next stage's queue, or `decide`: read from the `sample` least recently
    moved of them (a queue whose oldest item is not among them reads younger than it is, never
    older). A queue nothing waits for is absent. Unlike a depth, this grows when workers fall
    behind even if the queue is short (slow items), and it reads PostgreSQL: the same on every broker."""
    ages: dict[str, float] = {}
    with engine.connect() as conn:
        queued = conn.execute(
            select(func.min(submissions.c.updated_at)).where(submissions.c.status == SubmissionStatus.QUEUED)
        ).scalar()
        rows = conn.execute(
            select(submissions.c.id, submissions.c.policy_id, submissions.c.updated_at)
            .where(submissions.c.status == SubmissionStatus.ANALYZING)
            .order_by(submissions.c.updated_at)
            .limit(sample)
        ).all()
        done = stored_findings(conn, [r.id for r in rows]) if rows else {}
    if queued is not None:
        ages[Q_INGEST] = _age_s(queued)
    for r in rows:  # oldest first: the first one seen per queue is its oldest
        queue = next_queue(ctx, r.policy_id, {f.stage for f in done.get(r.id, [])})
        ages.setdefault(queue, _age_s(r.updated_at))
    return ages
