"""Reading and verifying the caller's tenant's audit log (role `auditor`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from moderation import audit
from moderation.api.deps import Auth, Ctx
from moderation.audit import checkpoint as checkpoints
from moderation.audit.search import EventFilter, search_events
from moderation.intake.text import check_text

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
