"""The automated decision: evaluate the policy on the findings (fail closed on anything that
cannot be evaluated) and write decision, findings, review task, outbox row and audit events in
one transaction, idempotently per submission."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, update

from moderation import audit, callbacks
from moderation.audit import Event
from moderation.audit.events import analyzed_event, dead_lettered_event, decided_event, statement_of_reasons
from moderation.db.rows import SubmissionRow
from moderation.db.sql import insert_ignore
from moderation.db.tables import AUTOMATED, dead_letters, decisions, submissions, utcnow
from moderation.intake.text import printable
from moderation.pipeline.context import Context
from moderation.pipeline.findings import Due, insert_findings
from moderation.policy import Decision, Policy, evaluate, qa_draw
from moderation.review.tasks import open_tasks, task_row
from moderation.vocab import Action, SubmissionStatus

log = logging.getLogger(__name__)


def attempt_budget(ctx: Context, policy: Policy | None) -> int:
    """Deliveries allowed per submission: every stage's first run plus `max_attempts` retries."""
    return ctx.settings.max_attempts + 1 + (len(policy.analyzer_stages) if policy else 0)


def decide_one(item: Due) -> Decision:
    """The automated decision for one submission; fails closed to review if it cannot be made."""
    try:
        return _decide_one(item)
    except Exception as exc:  # stored findings that no longer evaluate: a human decides
        log.exception("cannot evaluate %s", item.sub.id)
        return Decision(
            action=Action.REVIEW,
            categories={},
            reasons=[{"code": "evaluation_error", "error": f"{type(exc).__name__}: {exc}"[:300]}],
            policy_id=item.sub.policy_id,
            policy_version=item.policy.version if item.policy else "unknown",
            review_queue="default",
            review_reason="evaluation_error",
        )


def _decide_one(item: Due) -> Decision:
    sub, policy = item.sub, item.policy
    if policy is None:
        return Decision(
            action=Action.REVIEW,
            categories={},
            reasons=[{"code": "policy_missing", "policy": sub.policy_id}],
            policy_id=sub.policy_id,
            policy_version="unknown",
            review_queue="default",
            review_reason="policy_missing",
        )
    decision = evaluate(policy, item.found, qa_draw(sub.id))
    if item.reason:  # forced fail-closed outcome (dead letter)
        decision = Decision(
            action=Action.REVIEW,
            categories=decision.categories,
            reasons=[*decision.reasons, {"code": item.reason}],
            policy_id=decision.policy_id,
            policy_version=decision.policy_version,
            review_queue="default",
            review_reason=item.reason,
        )
    return decision


def finalize_many(
    ctx: Context, conn: Connection, due: list[Due], extra_events: list[tuple[str, Event]] | None = None
) -> dict[str, Decision]:
    """Record automated decisions, review tasks and audit events for `due`, inside `conn`.

    Idempotent per submission: where an automated decision exists already, nothing is written
    for it. `extra_events` (tenant, event) are appended to the chains in the same transaction.
    Chain heads are locked in tenant order, so concurrent batches cannot deadlock.
    """
    now = utcnow()
    decided = {item.sub.id: decide_one(item) for item in due}
    inserted = _insert_decisions(conn, due, decided, now)
    todo = [item for item in due if item.sub.id in inserted]
    stored = insert_findings(conn, [(item.sub.id, f) for item in todo for f in item.new])
    tasks: list[dict[str, Any]] = []
    by_tenant: dict[str, list[Event]] = defaultdict(list)
    for tenant, event in extra_events or []:
        by_tenant[tenant].append(event)
    status: dict[SubmissionStatus, list[str]] = defaultdict(list)
    for item in todo:
        sub, decision = item.sub, decided[item.sub.id]
        needs_people = Action(decision.action).needs_people
        status[SubmissionStatus.IN_REVIEW if needs_people else SubmissionStatus.DECIDED].append(sub.id)
        statement = statement_of_reasons(sub, item.policy, decision, item.found, now)
        events = [
            *item.events,
            *(analyzed_event(sub.id, f) for f in item.new if (sub.id, f.stage) in stored),
            decided_event(sub, decision, statement, now),
        ]
        if decision.review_queue:
            task, routed = task_row(sub, decision, item.policy, now)
            tasks.append(task)
            events.append(routed)
        by_tenant[sub.tenant_id] += events
    open_tasks(conn, tasks)
    callbacks.enqueue(conn, (item.sub for item in todo), AUTOMATED, now)
    for new_status, ids in status.items():
        conn.execute(
            update(submissions)
            .where(submissions.c.id.in_(ids))
            .values(status=new_status, decided_at=now, updated_at=now)
        )
    for tenant in sorted(by_tenant):
        audit.append(conn, tenant, by_tenant[tenant])
    return {item.sub.id: decided[item.sub.id] for item in todo}


def _insert_decisions(conn: Connection, due: list[Due], decided: dict[str, Decision], now: datetime) -> set[str]:
    """Insert the automated decisions; returns the submissions whose decision this call wrote."""
    if not due:
        return set()
    rows = conn.execute(
        insert_ignore(conn, decisions).returning(decisions.c.submission_id),
        [
            {
                "submission_id": item.sub.id,
                "dedupe_key": AUTOMATED,
                "action": decided[item.sub.id].action,
                "categories": decided[item.sub.id].categories,
                "reasons": decided[item.sub.id].reasons,
                "policy_id": decided[item.sub.id].policy_id,
                "policy_version": decided[item.sub.id].policy_version,
                "automated": True,
                "attempt": int(item.sub.attempts or 1),
                "decided_at": now,
            }
            for item in due
        ],
    ).all()
    return {r.submission_id for r in rows}


def dead_letter(conn: Connection, sub: SubmissionRow, task: str, error: str) -> Event:
    """Record the give-up in the dead-letter table; returns its audit event. The caller then
    fails the submission closed to review (never lost, never allowed)."""
    error = printable(error, 1000)  # bounded facts only: an exception's text can be anything
    conn.execute(
        insert(dead_letters).values(
            submission_id=sub.id,
            task=task,
            error=error,
            attempts=int(sub.attempts),
            created_at=utcnow(),
        )
    )
    return dead_lettered_event(sub, task, error)
