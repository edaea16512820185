"""The whole case of a review task, as a moderator needs it on one screen: the submission's
facts, every stage's finding (scores against the policy's marks, rationale, OCR text with the
phrases addressed to a model marked, flags, bank matches), the automated decision with its
reasons and clauses, earlier human decisions, the uploader's recent history in this tenant, the
appeal statement, and where the images are."""

from __future__ import annotations

import ast
import re
from typing import Any

from sqlalchemy import Connection, and_, select

from moderation.analyzers.base import Finding
from moderation.db.tables import AUTOMATED, appeals, decisions, findings, iso, submissions
from moderation.policy import Policy
from moderation.policy.marks import score_marks
from moderation.review.leases import task_json
from moderation.review.reviewer import restricted_submissions

HISTORY = 10
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def injected_spans(ocr_text: str | None, rationale: dict[str, str]) -> list[list[int]]:
    """Where in `ocr_text` the phrases that the analyzers read as addressed to a model or a
    moderator stand ([start, end) pairs), for the console to mark."""
    if not ocr_text:
        return []
    spans: list[list[int]] = []
    for key in ("prompt_injection", "moderation_talk"):
        for quoted in _QUOTED.findall(rationale.get(key, "")):
            try:
                phrase = str(ast.literal_eval(quoted))
            except (ValueError, SyntaxError):
                continue
            words = [re.escape(w) for w in phrase.split() if w]
            if not words:
                continue
            pattern = re.compile(r"\s*".join(words), re.IGNORECASE)
            spans += [[m.start(), m.end()] for m in pattern.finditer(ocr_text)]
    return sorted(spans)


def finding_view(f: Finding, policy: Policy | None) -> dict[str, Any]:
    return {
        "stage": f.stage,
        "analyzer": f.analyzer,
        "version": f.version,
        "model": f.model,
        "scores": score_marks(policy, f.scores),
        "confidence": f.confidence,
        "rationale": f.rationale,
        "ocr_text": f.ocr_text,
        "ocr_injected_spans": injected_spans(f.ocr_text, f.rationale),
        "flags": f.flags,
        "bank_match": f.bank_match,
        "error": f.error,
        "cached": f.cached,
    }


def decision_view(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "action": d.action,
        "categories": d.categories,
        "reasons": d.reasons,
        "policy": {"id": d.policy_id, "version": d.policy_version},
        "automated": bool(d.automated),
        "reviewer": d.reviewer_id,
        "decided_at": iso(d.decided_at),
    }


def _history(conn: Connection, sub: Any, show_restricted: bool) -> list[dict[str, Any]]:
    if not sub.uploader_id:
        return []
    rows = conn.execute(
        select(submissions.c.id, submissions.c.status, submissions.c.created_at)
        .where(
            and_(
                submissions.c.tenant_id == sub.tenant_id,
                submissions.c.uploader_id == sub.uploader_id,
                submissions.c.id != sub.id,
            )
        )
        .order_by(submissions.c.created_at.desc())
        .limit(HISTORY)
    ).all()
    if not show_restricted:  # child-safety material does not exist for this reviewer
        hidden = restricted_submissions(conn, [r.id for r in rows])
        rows = [r for r in rows if r.id not in hidden]
    actions: dict[str, tuple[bool, int, str]] = {}
    if rows:
        for d in conn.execute(
            select(decisions.c.submission_id, decisions.c.automated, decisions.c.id, decisions.c.action).where(
                decisions.c.submission_id.in_([r.id for r in rows])
            )
        ).all():
            rank = (not d.automated, int(d.id), str(d.action))  # a human decision wins, then the latest
            if d.submission_id not in actions or rank > actions[d.submission_id]:
                actions[d.submission_id] = rank
    return [
        {
            "submission_id": r.id,
            "status": r.status,
            "created_at": iso(r.created_at),
            "action": actions[r.id][2] if r.id in actions else None,
        }
        for r in rows
    ]


def build_case(
    conn: Connection,
    task: Any,
    policies: dict[str, Policy],
    now: Any,
    tasks_url: str = "/v1/review/tasks",
    show_restricted: bool = False,
) -> dict[str, Any]:
    """The case of `task` (a row the caller may see)."""
    sub = conn.execute(select(submissions).where(submissions.c.id == task.submission_id)).one()
    policy = policies.get(sub.policy_id)
    found = [
        Finding.from_json(r.body)
        for r in conn.execute(
            select(findings.c.body).where(findings.c.submission_id == sub.id).order_by(findings.c.id)
        ).all()
    ]
    rows = conn.execute(select(decisions).where(decisions.c.submission_id == sub.id).order_by(decisions.c.id)).all()
    automated = next((d for d in rows if d.dedupe_key == AUTOMATED), None)
    # A golden task must look like any other: no earlier human answer to copy.
    human = [] if task.golden else [decision_view(d) for d in rows if not d.automated]
    appeal = None
    if task.appeal_id:
        a = conn.execute(select(appeals).where(appeals.c.id == task.appeal_id)).first()
        if a is not None:
            appeal = {
                "id": a.id,
                "statement": a.statement,
                "appellant_id": a.appellant_id,
                "filed_at": iso(a.created_at),
                "due_at": iso(a.due_at),
                "appealed_decision_id": a.decision_id,
            }
    clauses = {c: r.dsa.clause for c, r in policy.categories.items()} if policy else {}
    image = f"{tasks_url}/{task.id}/image"
    return {
        "task": task_json(task, now),
        # Revealing the original counts against the exposure budget.
        "graphic": bool(task.graphic),
        "submission": {
            "id": sub.id,
            "external_id": sub.external_id,
            "format": sub.format,
            "byte_size": sub.byte_size,
            "width": sub.width,
            "height": sub.height,
            "frames": sub.frames,
            "uploaded_at": iso(sub.created_at),
            "uploader_id": sub.uploader_id,
            "caption": sub.caption,
            "policy": sub.policy_id,
            "status": sub.status,
            "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
        },
        "findings": [finding_view(f, policy) for f in found],
        "automated_decision": decision_view(automated) if automated is not None else None,
        "human_decisions": human,
        "uploader_history": _history(conn, sub, show_restricted),
        "appeal": appeal,
        "policy": {
            "id": sub.policy_id,
            "version": policy.version if policy else None,
            "clauses": clauses,
            "scores": score_marks(policy, automated.categories if automated is not None else {}),
        },
        "images": {"safe": f"{image}?variant=safe", "original": f"{image}?variant=original"},
    }
