"""Appeals (DSA Art. 20): the platform files one for its user (role submitter) against a
submission's current decision; anyone of the tenant who may read the submission lists them."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from moderation.api.deps import Auth, Ctx
from moderation.db.tables import utcnow
from moderation.errors import ModerationError
from moderation.review.appeals import file_appeal, list_appeals

router = APIRouter(tags=["appeals"])

SubmissionId = Annotated[str, Path(max_length=64)]


class AppealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: str = Field(min_length=1, max_length=5000, description="The user's reasons, in their words")
    appellant_id: str | None = Field(default=None, max_length=256, description="The platform's id of the user")


def _checked(submission_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", submission_id):
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    return submission_id


@router.post("/v1/submissions/{submission_id}/appeals", status_code=201)
def appeals_file(submission_id: SubmissionId, body: AppealIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """File an appeal → 201 `{id, status, due_at, ...}`. 409 APPEAL_OPEN, 422 APPEAL_WINDOW_CLOSED, 409 NOT_DECIDED."""
    who.require("submitter")
    with ctx.engine.begin() as conn:
        return file_appeal(
            conn,
            who.tenant_id,
            _checked(submission_id),
            body.statement,
            body.appellant_id,
            who.key_id,
            ctx.policies,
            ctx.settings.appeal_window_days,
            utcnow(),
        )


@router.get("/v1/submissions/{submission_id}/appeals")
def appeals_list(submission_id: SubmissionId, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """The submission's appeals, oldest first."""
    who.require("submitter", "moderator", "senior_moderator", "restricted_reviewer", "auditor", "admin")
    with ctx.engine.connect() as conn:
        hide = not who.roles & {"submitter", "auditor", "admin", "restricted_reviewer"}
        return {"appeals": list_appeals(conn, who.tenant_id, _checked(submission_id), hide_restricted=hide)}
