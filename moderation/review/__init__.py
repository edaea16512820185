"""Human review: tasks opened by automated decisions and appeals, claims and leases, the case a
moderator sees, safe images and audited reveals, golden items, SLA ageing (decisions that change
a submission are written by `moderation.pipeline.human`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from moderation.review import leases, listing


def upkeep(engine: Engine, now: datetime) -> dict[str, int]:
    """Beat's review upkeep: expired leases back to open, overdue tasks moved up (breaches)."""
    with engine.begin() as conn:
        expired = leases.expire(conn, now)
        breached = listing.age_overdue(conn, now)
    return {"expired_leases": expired, "breached": breached}
