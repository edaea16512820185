"""Submitting images and reading their status and decision."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse

from moderation import metrics
from moderation.access import Principal
from moderation.api.deps import Auth, Ctx
from moderation.errors import ModerationError
from moderation.pipeline.accept import SubmissionRequest, accept
from moderation.review.reviewer import restricted_submissions
from moderation.submissions.status import view

router = APIRouter(tags=["submissions"])


@router.post("/v1/submissions", status_code=202)
def submit(
    request: Request,
    ctx: Ctx,
    who: Auth,
    file: Annotated[UploadFile, File(description="The image (JPEG, PNG, GIF, WebP, BMP, TIFF)")],
    external_id: Annotated[str | None, Form(description="The platform's content id (puid)")] = None,
    caption: Annotated[str | None, Form()] = None,
    uploader_id: Annotated[str | None, Form()] = None,
    callback_url: Annotated[str | None, Form()] = None,
    priority: Annotated[str, Form(description="high | normal | low")] = "normal",
    policy: Annotated[str | None, Form(description="Policy id; the tenant default otherwise")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Accept an image for moderation. 202 with `{id, status}`; the row is durable before it is queued."""
    started = time.perf_counter()
    try:
        who.require("submitter", "admin")
        data = file.file.read(ctx.settings.max_upload_bytes + 1)
        req = SubmissionRequest(
            tenant_id=who.tenant_id,
            actor=who.key_id,
            default_policy=who.default_policy,
            external_id=external_id or None,
            idempotency_key=idempotency_key or None,
            caption=caption,
            uploader_id=uploader_id,
            callback_url=callback_url or None,
            priority=priority,
            policy=policy or None,
            request_ip=request.client.host if request.client else None,
        )
        result, created = accept(ctx, req, data)
    except ModerationError as exc:
        metrics.SUBMISSIONS.labels("rejected", exc.code).inc()
        raise
    metrics.SUBMISSIONS.labels("accepted" if created else "replayed", "").inc()
    metrics.SUBMIT_SECONDS.observe(time.perf_counter() - started)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return JSONResponse(result, status_code=202, headers=headers)


@router.get("/v1/submissions/{submission_id}")
def get_submission(submission_id: str, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Status and decision (`decision` is null until decided; a human decision supersedes the automated one)."""
    who.require("submitter", "moderator", "senior_moderator", "restricted_reviewer", "auditor", "admin")
    if not re.fullmatch(r"[0-9a-f]{32}", submission_id):
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    with ctx.engine.connect() as conn:
        if hides_restricted(who) and restricted_submissions(conn, [submission_id]):
            raise ModerationError("NOT_FOUND", f"No submission {submission_id}.")
        return view(conn, who.tenant_id, submission_id)


def hides_restricted(who: Principal) -> bool:
    """A caller that only reviews, without `restricted_reviewer`: child-safety material does not
    exist for it (the platform that uploaded it, auditors and admins still see it)."""
    return not who.roles & {"submitter", "auditor", "admin", "restricted_reviewer"}
