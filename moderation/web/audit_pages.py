"""The auditor workspace (role `auditor`, under /console/audit): the dashboard, decision search,
one submission's timeline (its image only as the safe derivative), chain verification with the
signed checkpoints, and exports. Every page reads the same functions as the audit API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from moderation import audit
from moderation.audit import checkpoint as checkpoints
from moderation.audit import exports
from moderation.audit.dashboard import figures
from moderation.audit.decisions import DecisionFilter, search, timeline
from moderation.db.tables import audit_checkpoints, iso, submissions, utcnow
from moderation.errors import ModerationError
from moderation.policy.dsa_vocab import SCHEMA_VERSION
from moderation.review.media import safe_variant
from moderation.web.charts import bars, stacked_days
from moderation.web.common import HEADERS, SessionCookie, ctx_of, guarded, load, page, require

router = APIRouter(prefix="/console/audit", include_in_schema=False)


def _auditor(request: Request, token: str | None) -> Any:
    session = load(request, token)
    require(session, "auditor")
    return session


@router.get("", response_class=HTMLResponse)
@guarded
def dashboard(
    request: Request, token: SessionCookie = None, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> Response:
    session = _auditor(request, token)
    with ctx_of(request).engine.connect() as conn:
        f = figures(conn, session.tenant_id, utcnow(), days)
    return page(
        request,
        "audit_dashboard.html",
        session=session,
        f=f,
        per_day=stacked_days(f["per_day"]),
        categories=bars(f["by_category"]),
        section="dashboard",
    )


def _filter(q: dict[str, Any]) -> DecisionFilter:
    def when(v: str | None) -> datetime | None:
        if not v:
            return None
        try:
            return datetime.fromisoformat(v)
        except ValueError as exc:
            raise ModerationError("INVALID_REQUEST", f"not a time: {v[:40]!r}") from exc

    def flag(v: str | None) -> bool | None:
        return None if v in (None, "") else v == "true"

    return DecisionFilter(
        since=when(q.get("since")),
        until=when(q.get("until")),
        action=q.get("action") or None,
        category=q.get("category") or None,
        automated=flag(q.get("automated")),
        reviewer=q.get("reviewer") or None,
        policy=q.get("policy") or None,
        appealed=flag(q.get("appealed")),
        reversed=flag(q.get("reversed")),
    )


FIELDS = ("since", "until", "action", "category", "automated", "reviewer", "policy", "appealed", "reversed")


@router.get("/decisions", response_class=HTMLResponse)
@guarded
def decisions_page(request: Request, token: SessionCookie = None, after_id: int = 0) -> Response:
    session = _auditor(request, token)
    q = {k: request.query_params.get(k, "")[:64] for k in FIELDS}
    with ctx_of(request).engine.connect() as conn:
        found = search(conn, session.tenant_id, _filter(q), max(after_id, 0), 100)
    return page(request, "audit_decisions.html", session=session, q=q, found=found, section="decisions")


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
@guarded
def timeline_page(request: Request, submission_id: str, token: SessionCookie = None) -> Response:
    session = _auditor(request, token)
    with ctx_of(request).engine.connect() as conn:
        t = timeline(conn, session.tenant_id, submission_id[:64])
    return page(request, "audit_timeline.html", session=session, t=t, section="decisions")


@router.get("/submissions/{submission_id}/image")
@guarded
def safe_image(request: Request, submission_id: str, token: SessionCookie = None) -> Response:
    """Auditors see media only as the safe derivative."""
    session = _auditor(request, token)
    ctx = ctx_of(request)
    with ctx.engine.connect() as conn:
        timeline(conn, session.tenant_id, submission_id[:64])  # 404 unless the tenant's
        sha256 = conn.execute(
            submissions.select().with_only_columns(submissions.c.sha256).where(submissions.c.id == submission_id)
        ).scalar_one()
    data = safe_variant(ctx.blobs, sha256, ctx.limits, ctx.settings.review_safe_side)
    return Response(data, media_type="image/jpeg", headers=HEADERS)


@router.get("/verify", response_class=HTMLResponse)
@guarded
def verify_page(request: Request, token: SessionCookie = None, checkpoint: str = "") -> Response:
    session = _auditor(request, token)
    ctx = ctx_of(request)
    with ctx.engine.connect() as conn:
        result = audit.verify(conn, session.tenant_id).to_json()
        stored = conn.execute(
            audit_checkpoints.select()
            .where(audit_checkpoints.c.tenant_id == session.tenant_id)
            .order_by(audit_checkpoints.c.seq.desc())
            .limit(50)
        ).all()
        against = None
        if checkpoint:
            cp = checkpoints.resolve(conn, session.tenant_id, checkpoint[:4096])
            against = checkpoints.verify_with_settings(conn, session.tenant_id, cp, ctx.settings).to_json()
    listed = [{"id": c.id, "seq": c.seq, "head_hash": c.head_hash, "signed_at": iso(c.signed_at)} for c in stored]
    return page(
        request,
        "audit_verify.html",
        session=session,
        result=result,
        checkpoints=listed,
        against=against,
        section="verify",
    )


@router.get("/checkpoints/{checkpoint_id}")
@guarded
def checkpoint_file(request: Request, checkpoint_id: int, token: SessionCookie = None) -> Response:
    """A stored signed checkpoint as a file (keep it outside the database)."""
    session = _auditor(request, token)
    with ctx_of(request).engine.connect() as conn:
        cp = checkpoints.resolve(conn, session.tenant_id, str(checkpoint_id))
    body = json.dumps(cp.to_json(), indent=2, sort_keys=True) + "\n"
    headers = {**HEADERS, "Content-Disposition": f'attachment; filename="checkpoint-{checkpoint_id}.json"'}
    return Response(body, media_type="application/json", headers=headers)


@router.get("/export", response_class=HTMLResponse)
@guarded
def export_page(request: Request, token: SessionCookie = None) -> Response:
    session = _auditor(request, token)
    return page(request, "audit_export.html", session=session, schema=SCHEMA_VERSION, section="export")


@router.get("/export/{name}")
@guarded
def export_file(request: Request, name: str, token: SessionCookie = None) -> Response:
    """decisions.csv, decisions.jsonl, statements.jsonl (DSA): streamed, audited."""
    session = _auditor(request, token)
    fmt = {"decisions.csv": "csv", "decisions.jsonl": "jsonl", "statements.jsonl": "dsa"}.get(name)
    if fmt is None:
        raise ModerationError("NOT_FOUND", "No such export.")
    ctx = ctx_of(request)
    q = {k: request.query_params.get(k, "")[:64] for k in FIELDS}
    f = _filter(q)
    f.check()
    body = exports.export(ctx.engine, session.tenant_id, f, fmt, ctx.policies, session.key_id)
    headers = {**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    if fmt == "dsa":
        headers["X-DSA-Schema"] = SCHEMA_VERSION
    return StreamingResponse(body, media_type=exports.FORMATS[fmt], headers=headers)
