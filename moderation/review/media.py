"""What a moderator's browser receives of an image: by default a server-side derivative
(downscaled, greyscale, blurred: the original's bytes never leave the server); the original only
for the holder of the task's claim, each time recorded (`media_revealed`) and counted against
the moderator's hourly exposure budget when the image is graphic."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from PIL import Image, ImageFilter
from sqlalchemy import Connection, Engine, and_, func, insert, select

from moderation import audit
from moderation.db.tables import media_reveals, submissions
from moderation.errors import ModerationError
from moderation.intake.blobs import BlobStore
from moderation.intake.images import Limits, inspect_image
from moderation.review import leases
from moderation.review.reviewer import Reviewer


def safe_variant(blobs: BlobStore, sha256: str, limits: Limits, side: int) -> bytes:
    """A JPEG of at most `side` px, greyscale and blurred so that shapes, not details, show.

    Raises ModerationError BLOB_NOT_FOUND / BlobCorrupt (a stored image that fails its hash)."""
    data = blobs.get(sha256)
    thumb = inspect_image(data, replace(limits, hash_side=side))[1]
    thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    grey = thumb.convert("L").filter(ImageFilter.GaussianBlur(radius=max(3.0, max(thumb.size) / 24)))
    out = io.BytesIO()
    grey.save(out, "JPEG", quality=70)
    return out.getvalue()


def original(blobs: BlobStore, sha256: str) -> bytes:
    """The uploaded bytes, re-hashed on read."""
    return blobs.get(sha256)


@dataclass(frozen=True)
class Exposure:
    used: int  # graphic originals revealed in the last hour
    budget: int

    @property
    def exceeded(self) -> bool:
        return self.budget > 0 and self.used >= self.budget

    def to_json(self) -> dict[str, Any]:
        return {"used": self.used, "budget": self.budget, "exceeded": self.exceeded, "window_s": 3600}


def exposure(conn: Connection, reviewer: Reviewer, budget: int, now: datetime) -> Exposure:
    r = media_reveals.c
    used = conn.execute(
        select(func.count()).where(
            and_(
                r.tenant_id == reviewer.tenant_id,
                r.moderator == reviewer.key_id,
                r.graphic.is_(True),
                r.revealed_at > now - timedelta(hours=1),
            )
        )
    ).scalar()
    return Exposure(int(used or 0), budget)


def stored_image(conn: Connection, submission_id: str) -> tuple[str, str]:
    """The submission's blob (sha256) and format."""
    row = conn.execute(
        select(submissions.c.sha256, submissions.c.format).where(submissions.c.id == submission_id)
    ).one()
    return str(row.sha256), str(row.format)


def record_reveal(conn: Connection, reviewer: Reviewer, task: Any, now: datetime) -> None:
    """Record one reveal of the task's original (row and audit event)."""
    conn.execute(
        insert(media_reveals).values(
            tenant_id=reviewer.tenant_id,
            moderator=reviewer.key_id,
            task_id=task.id,
            submission_id=task.submission_id,
            graphic=bool(task.graphic),
            revealed_at=now,
        )
    )
    audit.append(
        conn,
        reviewer.tenant_id,
        [
            audit.Event(
                "media_revealed",
                actor=reviewer.key_id,
                submission_id=task.submission_id,
                automated=False,
                facts={"review_task_id": task.id, "graphic": bool(task.graphic), "at": now.isoformat()},
            )
        ],
    )


def task_image(
    engine: Engine,
    blobs: BlobStore,
    limits: Limits,
    side: int,
    reviewer: Reviewer,
    task_id: str,
    variant: str,
    now: datetime,
) -> tuple[bytes, str]:
    """(bytes, media type) of a task's image: the safe derivative, or the original for the
    holder of the task's claim (recorded, in the same transaction, before it is returned; a read
    that fails records nothing). Raises NOT_FOUND, CLAIM_REQUIRED, BLOB_NOT_FOUND, BlobCorrupt,
    SERVICE_UNAVAILABLE (the blob store)."""
    if variant == "original":
        with engine.begin() as conn:
            task = leases.get_task(conn, reviewer, task_id)
            if not leases.holds(task, reviewer, now):
                raise ModerationError("CLAIM_REQUIRED", "The original is shown only to the holder of the task's claim.")
            sha256, fmt = stored_image(conn, task.submission_id)
            # Read first: a store that is down (or a tampered blob) must not leave a reveal in the
            # audit log, nor count against the moderator's exposure budget, for nothing shown.
            data = original(blobs, sha256)
            record_reveal(conn, reviewer, task, now)
        return data, f"image/{fmt.lower()}"
    with engine.connect() as conn:
        task = leases.get_task(conn, reviewer, task_id)
        sha256, _ = stored_image(conn, task.submission_id)
    return safe_variant(blobs, sha256, limits, side), "image/jpeg"
