"""Human decisions on review tasks: a moderator's review, escalation, QA override, golden
answer, and an appeal's outcome. One transaction writes the decision (a human one supersedes
the automated one without erasing it), closes the task (and the appeal), appends the audit
event with its DSA fields, optionally adds the image's hashes to a bank, and queues the
platform's callback; the callback is published after commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, select, update

from moderation import audit, callbacks
from moderation.banks.admin import add_entries
from moderation.db.tables import AUTOMATED, appeals, banks, decisions, review_tasks, submissions, utcnow
from moderation.errors import ModerationError
from moderation.intake.text import check_text
from moderation.pipeline.context import Context
from moderation.policy import Policy
from moderation.policy.schema import TAXONOMY
from moderation.queue import Q_CALLBACKS, T_CALLBACK
from moderation.review import golden
from moderation.review.appeals import current_decision
from moderation.review.leases import check_conflict, held, task_json
from moderation.review.reviewer import Reviewer
from moderation.review.tasks import ESCALATION_QUEUE, RESTRICTED_QUEUE, TIER, sla_s
from moderation.submissions.status import view
from moderation.vocab import AppealOutcome, ReviewStatus, SubmissionStatus, TaskKind

HUMAN_ACTIONS = ("allow", "restrict", "block", "escalate")
ESCALATION_BOOST = 10
MAX_REASON = 2000


@dataclass(frozen=True)
class HumanDecision:
    """A moderator's decision as sent (validated by `parse`)."""

    claim_token: str
    action: str | None
    categories: list[str]
    reason: str | None
    outcome: str | None = None
    add_to_bank: str | None = None

    @classmethod
    def parse(cls, body: object) -> HumanDecision:
        """Raises ModerationError INVALID_REQUEST naming the first bad field."""
        if not isinstance(body, dict):
            raise ModerationError("INVALID_REQUEST", "The body is a JSON object.")
        token = body.get("claim_token")
        if not isinstance(token, str) or not token or len(token) > 100:
            raise ModerationError("CLAIM_REQUIRED", "claim_token (from claim or next) is required.")
        action = body.get("action")
        if action is not None and action not in HUMAN_ACTIONS:
            raise ModerationError("INVALID_REQUEST", f"action is one of {', '.join(HUMAN_ACTIONS)}.", field="action")
        cats = body.get("categories") or []
        if not isinstance(cats, list) or len(cats) > len(TAXONOMY) or any(c not in TAXONOMY for c in cats):
            raise ModerationError(
                "INVALID_REQUEST", f"categories is a list drawn from {', '.join(TAXONOMY)}.", field="categories"
            )
        reason = body.get("reason")
        check_text("reason", reason, MAX_REASON)
        outcome = body.get("outcome")
        if outcome is not None and outcome not in set(AppealOutcome):
            raise ModerationError("INVALID_REQUEST", f"outcome is one of {', '.join(AppealOutcome)}.", field="outcome")
        bank = body.get("add_to_bank")
        check_text("add_to_bank", bank, 64)
        return cls(
            claim_token=token,
            action=action,
            categories=sorted(set(cats)),
            reason=reason.strip() if isinstance(reason, str) and reason.strip() else None,
            outcome=outcome,
            add_to_bank=bank or None,
        )


def decide(
    ctx: Context, reviewer: Reviewer, task_id: str, d: HumanDecision, now: datetime | None = None
) -> dict[str, Any]:
    """Apply the decision. Returns {task, submission, ...}. Raises NOT_FOUND, TASK_CLOSED,
    CLAIM_REQUIRED, REASON_REQUIRED, INVALID_REQUEST, and the bank's NOT_FOUND for add_to_bank."""
    now = now or utcnow()
    with ctx.engine.begin() as conn:
        task = held(conn, reviewer, task_id, d.claim_token, now)
        # Checked again at the decision, not only at the claim: one may have decided the
        # submission (another of its tasks) after claiming its appeal.
        check_conflict(conn, reviewer, task)
        sub = conn.execute(select(submissions).where(submissions.c.id == task.submission_id)).one()
        if task.golden:
            if d.action is None:
                raise ModerationError("INVALID_REQUEST", "action is required.", field="action")
            result = golden.answer(conn, reviewer, task, d.action, now)
            _close(conn, task, reviewer, now)
            return {"task": _task(conn, task.id, now), **result}
        if d.action == "escalate":
            return _escalate(conn, ctx.policies.get(sub.policy_id), reviewer, task, d, now)
        if "child_safety" in d.categories and not task.restricted:
            # Child-safety material is decided in the restricted queue, by those cleared for it.
            return _escalate(conn, ctx.policies.get(sub.policy_id), reviewer, task, d, now, restrict=True)
        if d.add_to_bank:
            check_bank_use(conn, reviewer, d)
        if task.appeal_id:
            result, event = _appeal(conn, reviewer, task, sub, d, ctx.policies.get(sub.policy_id), now)
        else:
            result, event = _review(conn, reviewer, task, sub, d, ctx.policies.get(sub.policy_id), now)
        if d.add_to_bank:
            add_entries(
                conn,
                reviewer.tenant_id,
                d.add_to_bank,
                [{"pdq": sub.pdq, "phash": sub.phash, "sha256": sub.sha256, "label": f"review {task.id}"}],
                actor=reviewer.key_id,
            )
        _close(conn, task, reviewer, now)
        queued = callbacks.enqueue(conn, [sub], event, now)
        body = {"task": _task(conn, task.id, now), "submission": view(conn, sub.tenant_id, sub.id), **result}
    for sid in queued:
        ctx.publisher.send(T_CALLBACK, [sid], Q_CALLBACKS)
    return body


def check_bank_use(conn: Connection, reviewer: Reviewer, d: HumanDecision) -> None:
    """A moderator may put a copy into a known-bad bank when the decision restricts it; a
    known-good bank (copies allowed without any model) takes an admin. Raises NOT_FOUND for a
    bank the tenant does not have, FORBIDDEN, INVALID_REQUEST."""
    bank = conn.execute(
        select(banks.c.kind).where(and_(banks.c.tenant_id == reviewer.tenant_id, banks.c.name == d.add_to_bank))
    ).first()
    if bank is None:
        raise ModerationError("NOT_FOUND", "No such bank.")
    if bank.kind == "good" and "admin" not in reviewer.roles:
        raise ModerationError("FORBIDDEN", "Only an admin adds images to a known-good bank.")
    if bank.kind == "bad" and d.action not in ("block", "restrict"):
        raise ModerationError("INVALID_REQUEST", "A known-bad bank takes images that are blocked or restricted.")


def _task(conn: Connection, task_id: str, now: datetime) -> dict[str, Any]:
    return task_json(conn.execute(select(review_tasks).where(review_tasks.c.id == task_id)).one(), now)


def _close(conn: Connection, task: Any, reviewer: Reviewer, now: datetime) -> None:
    conn.execute(
        update(review_tasks)
        .where(review_tasks.c.id == task.id)
        .values(
            status=ReviewStatus.DONE,
            decided_by=reviewer.key_id,
            closed_at=now,
            claim_token_hash=None,
            lease_until=None,
        )
    )


def _escalate(
    conn: Connection,
    policy: Policy | None,
    reviewer: Reviewer,
    task: Any,
    d: HumanDecision,
    now: datetime,
    restrict: bool = False,
) -> dict[str, Any]:
    """To the escalation queue (seniors), or with `restrict` to the restricted queue."""
    if not d.reason and not restrict:
        raise ModerationError("REASON_REQUIRED", "An escalation needs a reason for the senior moderator.")
    queue = RESTRICTED_QUEUE if restrict else ESCALATION_QUEUE
    conn.execute(
        update(review_tasks)
        .where(review_tasks.c.id == task.id)
        .values(
            # An escalated appeal keeps its appeal_id: its outcome is still owed, by a senior.
            kind=TaskKind.ESCALATION,
            queue=queue,
            restricted=bool(task.restricted) or restrict,
            status=ReviewStatus.OPEN,
            claimed_by=None,
            claim_token_hash=None,
            lease_until=None,
            priority=max(0, int(task.priority) - ESCALATION_BOOST),
            due_at=now + timedelta(seconds=sla_s(policy, queue)),
        )
    )
    audit.append(
        conn,
        reviewer.tenant_id,
        [
            audit.Event(
                "escalated",
                actor=reviewer.key_id,
                submission_id=task.submission_id,
                category=task.category,
                automated=False,
                facts={
                    "review_task_id": task.id,
                    "from_queue": task.queue,
                    "reason": d.reason,
                    "categories": d.categories,
                },
            )
        ],
    )
    return {"task": _task(conn, task.id, now), "escalated": True, "to_queue": queue}


def _human_row(
    policy: Policy | None,
    task: Any,
    sub: Any,
    reviewer: Reviewer,
    d: HumanDecision,
    action: str,
    now: datetime,
    code: str,
) -> dict[str, Any]:
    return {
        "submission_id": sub.id,
        "dedupe_key": f"task:{task.id}",
        "action": action,
        "categories": {c: 1.0 for c in d.categories},
        "reasons": [
            {
                "code": code,
                "reason": d.reason,
                "review_task_id": task.id,
                "kind": task.kind,
                "categories": d.categories,
                **({"outcome": d.outcome, "appeal_id": task.appeal_id} if code == "appeal" else {}),
            }
        ],
        "policy_id": sub.policy_id,
        "policy_version": policy.version if policy else "unknown",
        "automated": False,
        "attempt": 1,
        "reviewer_id": reviewer.key_id,
        "decided_at": now,
    }


def _statement(
    sub: Any,
    policy: Policy | None,
    automated: Any,
    action: str,
    d: HumanDecision,
    reviewer: Reviewer,
    task: Any,
    now: datetime,
    *,
    appeal: bool,
) -> dict[str, Any]:
    """The DSA fields of a human decision."""
    top = min(d.categories, key=lambda c: TIER.get(c, 99)) if d.categories else (task.category or None)
    rule = policy.categories.get(top) if policy and top else None
    flagged = automated is not None
    return {
        "puid": sub.external_id or sub.id,
        "content_type": f"image/{str(sub.format).lower()}",
        "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
        "content_date": sub.created_at.isoformat() if sub.created_at else None,
        "application_date": now.isoformat(),
        "action": action,
        "decision_visibility": (
            {"block": policy.visibility.block, "restrict": policy.visibility.restrict}.get(action) if policy else None
        ),
        "territorial_scope": policy.territorial_scope if policy else [],
        "decision_ground": rule.dsa.ground if rule else None,
        "illegal_content_legal_ground": rule.dsa.legal_ground if rule else None,
        "incompatible_content_ground": rule.dsa.clause if rule else None,
        "category": rule.dsa.category if rule else None,
        "categories": d.categories,
        "decision_facts": d.reason,
        "source_type": policy.source_type if policy else "SOURCE_VOLUNTARY",
        "automated_detection": flagged,
        # A machine flagged it and a person decided: partially; an appeal is decided by a person alone.
        "automated_decision": (
            "AUTOMATED_DECISION_PARTIALLY" if flagged and not appeal else "AUTOMATED_DECISION_NOT_AUTOMATED"
        ),
        "policy": {"id": sub.policy_id, "version": policy.version if policy else None},
        "automated_action": automated.action if automated is not None else None,
        "reviewer": {
            "key_id": reviewer.key_id,
            "claimed_at": task.claimed_at.isoformat() if task.claimed_at else None,
            "decided_at": now.isoformat(),
        },
        "review_task_id": task.id,
        "task_kind": task.kind,
    }


def _review(
    conn: Connection, reviewer: Reviewer, task: Any, sub: Any, d: HumanDecision, policy: Policy | None, now: datetime
) -> tuple[dict[str, Any], str]:
    if d.action is None:
        raise ModerationError("INVALID_REQUEST", "action is required.", field="action")
    automated = conn.execute(
        select(decisions).where(and_(decisions.c.submission_id == sub.id, decisions.c.dedupe_key == AUTOMATED))
    ).first()
    if not d.reason and (automated is None or d.action != automated.action):
        raise ModerationError("REASON_REQUIRED", "A reason is required: the action differs from the automated one.")
    conn.execute(decisions.insert().values(**_human_row(policy, task, sub, reviewer, d, d.action, now, "human_review")))
    conn.execute(
        update(submissions)
        .where(submissions.c.id == sub.id)
        .values(status=SubmissionStatus.REVIEWED, decided_at=now, updated_at=now)
    )
    statement = _statement(sub, policy, automated, d.action, d, reviewer, task, now, appeal=False)
    audit.append(
        conn,
        reviewer.tenant_id,
        [
            audit.Event(
                "reviewed",
                actor=reviewer.key_id,
                submission_id=sub.id,
                category=d.categories[0] if d.categories else task.category,
                automated=False,
                occurred_at=now,
                facts=statement,
            )
        ],
    )
    return {"decision": {"action": d.action, "categories": d.categories}}, f"review:{task.id}"


def _appeal(
    conn: Connection, reviewer: Reviewer, task: Any, sub: Any, d: HumanDecision, policy: Policy | None, now: datetime
) -> tuple[dict[str, Any], str]:
    if d.outcome is None:
        raise ModerationError("INVALID_REQUEST", "An appeal's decision needs an outcome.", field="outcome")
    if not d.reason:
        raise ModerationError("REASON_REQUIRED", "Every appeal outcome needs a reason (it is sent to the user).")
    row = conn.execute(select(appeals.c.decision_id).where(appeals.c.id == task.appeal_id)).first()
    appealed = (
        conn.execute(select(decisions).where(decisions.c.id == row.decision_id)).first()
        if row is not None
        else current_decision(conn, sub.id)
    )
    changed = d.outcome != AppealOutcome.UPHELD
    action = d.action if changed else (appealed.action if appealed is not None else None)
    if changed and d.action is None:
        raise ModerationError(
            "INVALID_REQUEST", "A reversed or modified decision names its new action.", field="action"
        )
    if changed:
        conn.execute(
            decisions.insert().values(**_human_row(policy, task, sub, reviewer, d, str(action), now, "appeal"))
        )
        conn.execute(
            update(submissions)
            .where(submissions.c.id == sub.id)
            .values(status=SubmissionStatus.REVIEWED, decided_at=now, updated_at=now)
        )
    conn.execute(
        update(appeals)
        .where(appeals.c.id == task.appeal_id)
        .values(status="decided", outcome=d.outcome, decided_at=now, decided_by=reviewer.key_id)
    )
    automated = conn.execute(
        select(decisions).where(and_(decisions.c.submission_id == sub.id, decisions.c.dedupe_key == AUTOMATED))
    ).first()
    facts = {
        # The statement of reasons of the outcome (what stands now), then the appeal's own facts.
        **_statement(sub, policy, automated, str(action), d, reviewer, task, now, appeal=True),
        "appeal_id": task.appeal_id,
        "outcome": d.outcome,
        "previous_action": appealed.action if appealed is not None else None,
        "action": action,
        "reason": d.reason,
        "automated_detection": automated is not None,
        "automated_decision": "AUTOMATED_DECISION_NOT_AUTOMATED",
        "reviewer": {"key_id": reviewer.key_id, "decided_at": now.isoformat()},
        "review_task_id": task.id,
        "categories": d.categories,
    }
    audit.append(
        conn,
        reviewer.tenant_id,
        [
            audit.Event(
                "appeal_decided",
                actor=reviewer.key_id,
                submission_id=sub.id,
                category=d.categories[0] if d.categories else task.category,
                automated=False,
                occurred_at=now,
                facts=facts,
            )
        ],
    )
    return {"appeal": {"id": task.appeal_id, "outcome": d.outcome, "action": action}}, f"appeal:{task.appeal_id}"
