"""Human review (roles moderator, senior_moderator, restricted_reviewer): the task list, `next`,
claims and leases, the case, its images, and decisions; golden items (admin). A task the caller
may not see answers 404, like one that does not exist."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from moderation.access import Principal
from moderation.api.deps import Auth, Ctx
from moderation.db.tables import utcnow
from moderation.pipeline.human import HumanDecision, decide
from moderation.review import golden, leases, media
from moderation.review.case import build_case
from moderation.review.listing import TaskFilter, list_tasks, queue_counts
from moderation.review.reviewer import Reviewer
from moderation.review.serve import serve_for

router = APIRouter(tags=["review"])

TaskId = Annotated[str, Path(max_length=32)]
NO_STORE = {"Cache-Control": "no-store, private", "X-Content-Type-Options": "nosniff"}


def reviewer_of(who: Principal) -> Reviewer:
    reviewer = Reviewer(who.key_id, who.tenant_id, who.roles)
    reviewer.require()
    return reviewer


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claim_token: str = Field(min_length=1, max_length=100)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claim_token: str = Field(max_length=100)
    action: Literal["allow", "restrict", "block", "escalate"] | None = None
    categories: list[str] = Field(default_factory=list, max_length=20)
    reason: str | None = Field(default=None, max_length=2000)
    outcome: Literal["upheld", "reversed", "modified"] | None = None
    add_to_bank: str | None = Field(default=None, max_length=64)


class GoldenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    submission_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    expected_action: Literal["allow", "restrict", "block", "escalate"]


@router.get("/v1/review/tasks")
def review_tasks_list(
    ctx: Ctx,
    who: Auth,
    queue: Annotated[str | None, Query(max_length=32)] = None,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    category: Annotated[str | None, Query(max_length=32)] = None,
    policy: Annotated[str | None, Query(max_length=64)] = None,
    overdue: bool | None = None,
    mine: bool = False,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Tasks the caller may see, oldest first: `{tasks, next_cursor}`."""
    reviewer = reviewer_of(who)
    f = TaskFilter(queue, kind, status, category, policy, overdue, mine)
    with ctx.engine.connect() as conn:
        return list_tasks(conn, reviewer, f, utcnow(), cursor, limit)


@router.get("/v1/review/queues")
def review_queues(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Per queue the caller may see: open tasks, oldest age, overdue; the caller's claims and exposure."""
    reviewer = reviewer_of(who)
    now = utcnow()
    with ctx.engine.connect() as conn:
        return {
            "queues": queue_counts(conn, reviewer, now),
            "mine": list_tasks(conn, reviewer, TaskFilter(mine=True), now)["tasks"],
            "exposure": media.exposure(conn, reviewer, ctx.settings.exposure_budget_per_hour, now).to_json(),
        }


@router.post("/v1/review/next", response_model=None)
def review_next(ctx: Ctx, who: Auth, queue: Annotated[str | None, Query(max_length=32)] = None) -> Any:
    """Claim the most urgent task the caller may take: 200 with the task and its `claim`, 204 when none."""
    reviewer = reviewer_of(who)
    with ctx.engine.begin() as conn:
        task = serve_for(conn, reviewer, ctx.settings, ctx.policies, utcnow(), queue)
    return task if task is not None else Response(status_code=204)


@router.post("/v1/review/tasks/{task_id}/claim")
def review_claim(task_id: TaskId, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Claim a task: 200 with `claim: {token, expires_at}`; 409 ALREADY_CLAIMED or TASK_CLOSED;
    403 CONFLICT_OF_INTEREST."""
    reviewer = reviewer_of(who)
    with ctx.engine.begin() as conn:
        return leases.claim(conn, reviewer, task_id, utcnow(), ctx.settings.review_lease_s)


@router.post("/v1/review/tasks/{task_id}/release")
def review_release(task_id: TaskId, body: ClaimIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Give the task back to its queue (skip). Needs the caller's live claim."""
    reviewer = reviewer_of(who)
    with ctx.engine.begin() as conn:
        return leases.release(conn, reviewer, task_id, body.claim_token, utcnow())


@router.post("/v1/review/tasks/{task_id}/heartbeat")
def review_heartbeat(task_id: TaskId, body: ClaimIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Extend the caller's lease."""
    reviewer = reviewer_of(who)
    with ctx.engine.begin() as conn:
        return leases.heartbeat(conn, reviewer, task_id, body.claim_token, utcnow(), ctx.settings.review_lease_s)


@router.get("/v1/review/tasks/{task_id}")
def review_case(task_id: TaskId, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """The whole case: submission facts, findings against the policy's marks, decisions, history, appeal."""
    reviewer = reviewer_of(who)
    now = utcnow()
    with ctx.engine.connect() as conn:
        task = leases.get_task(conn, reviewer, task_id)
        case = build_case(conn, task, ctx.policies, now, show_restricted=reviewer.restricted)
        case["exposure"] = media.exposure(conn, reviewer, ctx.settings.exposure_budget_per_hour, now).to_json()
        return case


@router.get("/v1/review/tasks/{task_id}/image", response_class=Response)
def review_image(task_id: TaskId, ctx: Ctx, who: Auth, variant: Literal["safe", "original"] = "safe") -> Response:
    """`safe`: downscaled, greyscale, blurred, made on the server. `original`: only to the claim holder, audited."""
    s = ctx.settings
    data, media_type = media.task_image(
        ctx.engine, ctx.blobs, ctx.limits, s.review_safe_side, reviewer_of(who), task_id, variant, utcnow()
    )
    return Response(data, media_type=media_type, headers=NO_STORE)


@router.post("/v1/review/tasks/{task_id}/decision")
def review_decision(task_id: TaskId, body: DecisionIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Decide (needs the live claim): allow | restrict | block finish the task, escalate moves it to seniors;
    an appeal adds `outcome`. `reason` is required when the action differs from the automated one and on appeals."""
    reviewer = reviewer_of(who)
    return decide(ctx, reviewer, task_id, HumanDecision.parse(body.model_dump()))


@router.post("/v1/review/golden", status_code=201)
def review_golden_mark(body: GoldenIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Mark a decided submission as a golden item with the action a reviewer should reach (admin)."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        return golden.mark(conn, who.tenant_id, body.submission_id, body.expected_action, who.key_id, utcnow())


@router.get("/v1/review/golden/agreement")
def review_golden_agreement(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Per moderator: golden items answered and agreement with the expected action (admin, auditor)."""
    who.require("admin", "auditor")
    with ctx.engine.connect() as conn:
        return {"moderators": golden.agreement(conn, who.tenant_id)}
