"""Reading and verifying the caller's tenant's audit log (role `auditor`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from moderation import audit
from moderation.api.deps import Auth, Ctx
from moderation.audit import checkpoint as checkpoints
from moderation.audit import exports
from moderation.audit.decisions import DecisionFilter, search, timeline
from moderation.audit.search import EventFilter, search_events
from moderation.intake.text import check_text
from moderation.policy.dsa_vocab import SCHEMA_VERSION

router = APIRouter(tags=["audit"])


@router.get("/v1/audit/events")
def audit_events_list(
    ctx: Ctx,
    who: Auth,
    submission_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    category: str | None = None,
    automated: bool | None = None,
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Audit events of the caller's tenant in chain order; page with `after_seq`."""
    who.require("auditor")
    for name, value in (("submission_id", submission_id), ("action", action), ("category", category)):
        check_text(name, value, 64)
    where = EventFilter(submission_id, since, until, action, category, automated, after_seq)
    with ctx.engine.connect() as conn:
        return search_events(conn, who.tenant_id, where, limit)


@router.get("/v1/audit/verify")
def audit_verify(
    ctx: Ctx,
    who: Auth,
    checkpoint: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
) -> dict[str, Any]:
    """Walk the tenant's hash chain; `first_break` names the first row that does not verify.

    `checkpoint` (a stored checkpoint's id, or the base64url of a checkpoint file) also proves
    the log still extends that signed checkpoint: signed by the configured verify key, this
    tenant's, and the row at its seq unchanged. The answer then has `checkpoint` with `ok` and
    `reason`; a stored id of another tenant answers 404."""
    who.require("auditor")
    with ctx.engine.connect() as conn:
        if checkpoint is None:
            return audit.verify(conn, who.tenant_id).to_json()
        cp = checkpoints.resolve(conn, who.tenant_id, checkpoint)
        return checkpoints.verify_with_settings(conn, who.tenant_id, cp, ctx.settings).to_json()


def decision_filter(
    since: datetime | None = None,
    until: datetime | None = None,
    action: Annotated[str | None, Query(max_length=16)] = None,
    category: Annotated[str | None, Query(max_length=32)] = None,
    automated: bool | None = None,
    reviewer: Annotated[str | None, Query(max_length=64)] = None,
    policy: Annotated[str | None, Query(max_length=64)] = None,
    policy_version: Annotated[str | None, Query(max_length=64)] = None,
    appealed: bool | None = None,
    reversed: bool | None = None,
) -> DecisionFilter:
    """The decision filters that search and exports share (every field narrows)."""
    return DecisionFilter(
        since, until, action, category, automated, reviewer, policy, policy_version, appealed, reversed
    )


Filters = Annotated[DecisionFilter, Depends(decision_filter)]


@router.get("/v1/audit/decisions")
def audit_decisions(
    ctx: Ctx,
    who: Auth,
    f: Filters,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Decisions of the caller's tenant (automated and human) in id order; page with `after_id`."""
    who.require("auditor")
    with ctx.engine.connect() as conn:
        return search(conn, who.tenant_id, f, after_id, limit)


@router.get("/v1/audit/submissions/{submission_id}/timeline")
def audit_timeline(submission_id: Annotated[str, Path(max_length=64)], ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Everything the chain holds about one submission, in order, each event with its seq and hash."""
    who.require("auditor")
    with ctx.engine.connect() as conn:
        return timeline(conn, who.tenant_id, submission_id)


@router.get("/v1/audit/export", response_class=StreamingResponse)
def audit_export(
    ctx: Ctx, who: Auth, f: Filters, format: Literal["csv", "jsonl", "dsa"] = "jsonl"
) -> StreamingResponse:
    """Stream the tenant's decisions as CSV, JSON Lines, or DSA statements of reasons (JSON Lines,
    one statement per line, schema pinned in `X-DSA-Schema`). No row cap; memory stays flat."""
    who.require("auditor")
    f.check()
    body = exports.export(ctx.engine, who.tenant_id, f, format, ctx.policies, who.key_id)
    name = f"decisions-{who.tenant_id}.{'csv' if format == 'csv' else 'jsonl'}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    if format == "dsa":
        headers["X-DSA-Schema"] = SCHEMA_VERSION
    return StreamingResponse(body, media_type=exports.FORMATS[format], headers=headers)
