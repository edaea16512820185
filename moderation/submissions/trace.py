"""What the playground shows of one submission while it goes through the pipeline: its hashes,
each stage's finding with when it arrived (bank matches, cache hits, scores against the policy's
bands, flags, rationale), the decision and the audit events so far."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, select

from moderation.analyzers.base import Finding
from moderation.db.tables import as_utc, audit_events, decisions, findings, iso, submissions
from moderation.errors import ModerationError
from moderation.policy import Policy
from moderation.policy.marks import score_marks


def trace(conn: Connection, tenant_id: str, submission_id: str, policies: dict[str, Policy]) -> dict[str, Any]:
    """Raises ModerationError NOT_FOUND for another tenant's submission (or none)."""
    sub = conn.execute(
        select(submissions).where(and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id))
    ).first()
    if sub is None:
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    policy = policies.get(sub.policy_id)
    start = as_utc(sub.created_at)
    stages = []
    for row in conn.execute(
        select(findings.c.body, findings.c.created_at).where(findings.c.submission_id == sub.id).order_by(findings.c.id)
    ).all():
        f = Finding.from_json(row.body)
        stages.append(
            {
                "stage": f.stage,
                "analyzer": f.analyzer,
                "version": f.version,
                "after_s": round((as_utc(row.created_at) - start).total_seconds(), 3),
                "scores": score_marks(policy, f.scores),
                "confidence": f.confidence,
                "flags": {k: v for k, v in f.flags.items() if v},
                "rationale": f.rationale,
                "ocr_text": f.ocr_text,
                "bank_match": f.bank_match,
                "cached": f.cached,
                "error": f.error,
            }
        )
    rows = conn.execute(select(decisions).where(decisions.c.submission_id == sub.id).order_by(decisions.c.id)).all()
    decision = None
    if rows:
        d = ([r for r in rows if not r.automated] or rows)[-1]
        decision = {
            "action": d.action,
            "categories": score_marks(policy, {k: float(v) for k, v in (d.categories or {}).items()}),
            "reasons": d.reasons,
            "automated": bool(d.automated),
            "after_s": round((as_utc(d.decided_at) - start).total_seconds(), 3),
        }
    events = conn.execute(
        select(audit_events.c.seq, audit_events.c.action, audit_events.c.occurred_at, audit_events.c.row_hash)
        .where(and_(audit_events.c.tenant_id == tenant_id, audit_events.c.submission_id == sub.id))
        .order_by(audit_events.c.seq)
    ).all()
    return {
        "id": sub.id,
        "status": sub.status,
        "policy": {"id": sub.policy_id, "version": policy.version if policy else None},
        "caption": sub.caption,
        "file": {"format": sub.format, "width": sub.width, "height": sub.height, "bytes": sub.byte_size},
        "hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
        "stages": stages,
        "decision": decision,
        "events": [{"seq": e.seq, "action": e.action, "at": iso(e.occurred_at), "hash": e.row_hash} for e in events],
        "done": sub.status in ("decided", "in_review", "reviewed", "rejected"),
    }
