"""Accepting an upload: validate the fields, decode and hash the image, store the blob, commit
the submission row, then publish (the row is durable before anything is queued)."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, insert, select
from sqlalchemy.exc import IntegrityError

from moderation import callbacks
from moderation.access.ratelimit import Bucket
from moderation.db.tables import submissions, utcnow
from moderation.errors import ModerationError
from moderation.intake.images import inspect_image
from moderation.intake.text import check_text
from moderation.pipeline.context import Context
from moderation.vocab import Priority, SubmissionStatus

_URL = re.compile(r"https?://[^\s]+")


@dataclass
class SubmissionRequest:
    tenant_id: str
    actor: str  # api key id, or "queue:<key id>"
    default_policy: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    caption: str | None = None
    uploader_id: str | None = None
    callback_url: str | None = None
    priority: str = "normal"
    policy: str | None = None
    request_ip: str | None = None
    source: str = "http"


def _check_fields(ctx: Context, req: SubmissionRequest) -> str:
    def bad(message: str, **data: Any) -> ModerationError:
        return ModerationError("INVALID_REQUEST", message, **data)

    if req.priority not in tuple(Priority):
        raise bad(f"priority must be one of {', '.join(Priority)}.", field="priority")
    for name, value, limit in (
        ("external_id", req.external_id, 256),
        ("idempotency_key", req.idempotency_key, 256),
        ("uploader_id", req.uploader_id, 256),
        ("caption", req.caption, 10_000),
        ("callback_url", req.callback_url, 2_000),
        ("policy", req.policy, 64),
    ):
        check_text(name, value, limit)
    if req.callback_url:
        if not _URL.fullmatch(req.callback_url):
            raise bad("callback_url must be an http(s) URL.", field="callback_url")
        # What can be known before DNS, under the tenant's receiver rules: the host encodes
        # (IDNA 2008), https unless the tenant allows http, a literal address or localhost only
        # in the tenant's private networks. Delivery resolves and checks again, and connects
        # to the checked address.
        with ctx.engine.connect() as conn:
            rules = callbacks.receiver_rules(conn, req.tenant_id)
        try:
            callbacks.check_url(req.callback_url, rules)
        except callbacks.DestinationRefused as exc:
            raise bad(f"callback_url refused: {exc}.", field="callback_url") from None
    policy_id = req.policy or req.default_policy or ctx.settings.default_policy
    if policy_id not in ctx.policies:
        raise ModerationError("UNKNOWN_POLICY", f"No policy {policy_id!r}; known: {', '.join(sorted(ctx.policies))}.")
    # The tenant's allow-list (cached per process, like keys): a submitter must not pick a
    # weaker policy (say `hash-only`) than its tenant was given.
    if req.policy is not None:
        tenant = ctx.keys.tenant(req.tenant_id)
        if tenant is not None and not tenant.allows(policy_id, req.default_policy or ctx.settings.default_policy):
            raise ModerationError(
                "POLICY_NOT_ALLOWED", f"Tenant {req.tenant_id!r} may not use policy {policy_id!r}.", field="policy"
            )
    return policy_id


def _existing(conn: Connection, req: SubmissionRequest) -> Any | None:
    conds = []
    if req.external_id:
        conds.append(submissions.c.external_id == req.external_id)
    if req.idempotency_key:
        conds.append(submissions.c.idempotency_key == req.idempotency_key)
    if not conds:
        return None
    from sqlalchemy import or_

    return conn.execute(
        select(submissions.c.id, submissions.c.status, submissions.c.sha256).where(
            and_(submissions.c.tenant_id == req.tenant_id, or_(*conds))
        )
    ).first()


def _same_or_conflict(row: Any, sha256: str) -> dict[str, Any]:
    if row.sha256 != sha256:
        raise ModerationError(
            "IDEMPOTENCY_CONFLICT",
            "This external_id / Idempotency-Key was used for a different image.",
            submission_id=row.id,
        )
    return {"id": row.id, "status": row.status}


def _high_priority_quota(ctx: Context, req: SubmissionRequest) -> None:
    """`high` jumps every queue: each tenant has a quota of it. Over it, an HTTP submission gets
    429 (the platform can resend at `normal`); a queue-side one is demoted to `normal`, since a
    message is never lost for its priority."""
    s = ctx.settings
    if req.priority != Priority.HIGH or not s.rate_limit:
        return
    wait = ctx.limiter.take([Bucket(f"high:{req.tenant_id}", s.high_priority_per_s, s.high_priority_burst)])
    if not wait:
        return
    if req.source == "queue":
        req.priority = Priority.NORMAL
        return
    raise ModerationError(
        "RATE_LIMITED",
        f"Over this tenant's quota of high-priority submissions ({s.high_priority_per_s:g}/s); "
        "send it at normal priority or retry later.",
        retry_after_s=max(1, math.ceil(wait)),
    )


def accept(ctx: Context, req: SubmissionRequest, data: bytes) -> tuple[dict[str, Any], bool]:
    """Validate, store and durably record an upload, then publish it. Returns ({id, status}, created).

    Raises ModerationError (4xx) for bad input: nothing is stored or queued for it. The same
    (tenant, external_id) or Idempotency-Key returns the first submission (409 if the image differs).
    """
    policy_id = _check_fields(ctx, req)
    _high_priority_quota(ctx, req)
    info = inspect_image(data, ctx.limits)[0]
    sha256 = info.sha256
    ctx.blobs.put(data, info.sha256, hashed_here=True)  # inspect_image hashed these bytes
    sid = secrets.token_hex(16)
    now = utcnow()
    values = {
        "id": sid,
        "tenant_id": req.tenant_id,
        "external_id": req.external_id,
        "idempotency_key": req.idempotency_key,
        "source": req.source,
        "sha256": info.sha256,
        "phash": info.phash,
        "pdq": info.pdq,
        "pdq_quality": info.pdq_quality,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "byte_size": info.byte_size,
        "caption": req.caption,
        "uploader_id": req.uploader_id,
        "callback_url": req.callback_url,
        "priority": req.priority,
        "policy_id": policy_id,
        "status": SubmissionStatus.QUEUED,
        "attempts": 0,
        "request_ip": req.request_ip,
        "api_key_id": req.actor,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with ctx.engine.begin() as conn:
            conn.execute(insert(submissions), values)  # params apart: the compiled statement is cached
    except IntegrityError:
        # Lost a race with the same external_id / idempotency key.
        with ctx.engine.connect() as conn:
            row = _existing(conn, req)
        if row is None:
            raise
        return _same_or_conflict(row, sha256), False
    ctx.batcher.add(sid, req.priority)
    return {"id": sid, "status": SubmissionStatus.QUEUED}, True
