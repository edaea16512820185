"""Who reviews, and which tasks exist for them.

A `Reviewer` is the caller as the review package sees it (the doors build it from the API key or
the console session). Visibility is one SQL condition used by every query of this package, so a
task that a caller may not see is absent from lists, counts and `next`, and answers 404 by id:
restricted (child-safety) tasks exist only for `restricted_reviewer`, escalations only for
`senior_moderator`, everything else for `moderator` and `senior_moderator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, false, or_

from moderation.db.tables import review_tasks
from moderation.errors import ModerationError
from moderation.vocab import TaskKind

REVIEW_ROLES = ("moderator", "senior_moderator", "restricted_reviewer")


@dataclass(frozen=True)
class Reviewer:
    key_id: str
    tenant_id: str
    roles: frozenset[str]

    @property
    def general(self) -> bool:
        return bool({"moderator", "senior_moderator"} & self.roles)

    @property
    def senior(self) -> bool:
        return "senior_moderator" in self.roles

    @property
    def restricted(self) -> bool:
        return "restricted_reviewer" in self.roles

    def require(self) -> None:
        """Raises ModerationError FORBIDDEN for a caller with no reviewing role."""
        if not set(REVIEW_ROLES) & self.roles:
            raise ModerationError("FORBIDDEN", f"This endpoint needs one of the roles: {', '.join(REVIEW_ROLES)}.")


def visible(reviewer: Reviewer) -> Any:
    """The tasks of the reviewer's tenant that exist for this reviewer (a SQL condition)."""
    t = review_tasks.c
    restricted: Any = t.restricted.is_(True) if reviewer.restricted else false()
    ordinary: Any = false()
    if reviewer.general:
        ordinary = and_(t.restricted.is_(False), t.kind != TaskKind.ESCALATION)
        if reviewer.senior:
            ordinary = t.restricted.is_(False)
    return and_(t.tenant_id == reviewer.tenant_id, or_(restricted, ordinary))


def may_see(reviewer: Reviewer, task: Any) -> bool:
    """The same rule as `visible`, for a row already read."""
    if task.tenant_id != reviewer.tenant_id:
        return False
    if task.restricted:
        return reviewer.restricted
    if task.kind == TaskKind.ESCALATION:
        return reviewer.senior
    return reviewer.general


def restricted_submissions(conn: Any, submission_ids: list[str], review_at: float = 0.05) -> set[str]:
    """Which of these submissions are child-safety material, whatever path they took: a
    restricted task, or any decision (automated, human, a bank match) that scored `child_safety`
    at or above `review_at`. Their tasks are restricted, and to callers without
    `restricted_reviewer` they do not exist."""
    from sqlalchemy import select

    from moderation.db.tables import decisions

    if not submission_ids:
        return set()
    out = set(
        conn.execute(
            select(review_tasks.c.submission_id).where(
                and_(review_tasks.c.submission_id.in_(submission_ids), review_tasks.c.restricted.is_(True))
            )
        ).scalars()
    )
    for sid, categories in conn.execute(
        select(decisions.c.submission_id, decisions.c.categories).where(decisions.c.submission_id.in_(submission_ids))
    ).all():
        score = (categories or {}).get("child_safety")
        if isinstance(score, int | float) and score >= review_at:
            out.add(sid)
    return out
