"""Queue-side ingest: one platform message through the same validation and durability path as
HTTP. The tenant comes from the broker account that published it (never from the message:
messages carry no credentials). A rejected message is recorded and never retried."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sqlalchemy import and_, insert, select

from moderation import audit
from moderation.access.ingest import IngestAccount
from moderation.db.tables import dead_letters, submissions, utcnow
from moderation.errors import ModerationError
from moderation.intake.text import check_text, printable
from moderation.pipeline.accept import SubmissionRequest, accept
from moderation.pipeline.context import Context

TEXT_FIELDS = ("external_id", "caption", "uploader_id", "callback_url", "priority", "policy")
FIELDS = frozenset({*TEXT_FIELDS, "image_b64", "blob_sha256"})
# What a rejection keeps of the message (the append-only log must not take whatever a platform sends).
_KEPT = ("external_id", "uploader_id", "priority", "policy")
_KEPT_CHARS = 256
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def submit_message(ctx: Context, account: IngestAccount | None, message: Any) -> dict[str, Any]:
    """Handle one queue-side submission published by `account` (None: an account the gateway
    does not know, or a message without one). Returns {id, status, created} or {rejected, message}.

    Raises only what is worth retrying (database or broker faults): the gateway then keeps the
    message unacknowledged until it is stored or rejected.
    """
    try:
        if account is None:
            raise ModerationError("UNAUTHENTICATED", "The message's broker account is unknown or revoked.")
        if not isinstance(message, dict):
            raise ModerationError("INVALID_MESSAGE", "The message must be a JSON object.")
        unknown = sorted(set(message) - FIELDS)
        if unknown:
            # `api_key` included: credentials never travel in messages (and are never recorded).
            shown = ", ".join(printable(u, 40) for u in unknown[:5])
            raise ModerationError("INVALID_MESSAGE", f"Unknown fields: {shown}.")
        for name in TEXT_FIELDS:
            if message.get(name) is not None and not isinstance(message[name], str):
                raise ModerationError("INVALID_MESSAGE", f"{name} must be a string.")
            try:
                check_text(name, message.get(name), 100_000)
            except ModerationError as exc:
                raise ModerationError("INVALID_MESSAGE", exc.message) from None
        external_id = message.get("external_id")
        if not external_id:
            raise ModerationError("INVALID_MESSAGE", "external_id (a string) is required on the queue.")
        data = _image(ctx, account.tenant_id, message)
        req = SubmissionRequest(
            tenant_id=account.tenant_id,
            actor=f"ingest:{account.account}",
            default_policy=account.default_policy,
            external_id=external_id,
            caption=message.get("caption"),
            uploader_id=message.get("uploader_id"),
            callback_url=message.get("callback_url"),
            priority=message.get("priority") or "normal",
            policy=message.get("policy"),
            source="queue",
        )
        result, created = accept(ctx, req, data)
        return {**result, "created": created}
    except ModerationError as exc:
        if not exc.final:
            raise
        record_rejection(ctx, account.tenant_id if account else None, message, exc)
        return {"rejected": exc.code, "message": exc.message}


def _image(ctx: Context, tenant_id: str, message: dict[str, Any]) -> bytes:
    if message.get("image_b64") is not None:
        b64 = message["image_b64"]
        if not isinstance(b64, str) or len(b64) > ctx.settings.max_upload_bytes * 4 // 3 + 8:
            raise ModerationError("IMAGE_TOO_LARGE", "image_b64 is over the upload size cap.")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ModerationError("INVALID_MESSAGE", "image_b64 is not valid base64.") from exc
    if message.get("blob_sha256") is not None:
        return _own_blob(ctx, tenant_id, message["blob_sha256"])
    raise ModerationError("INVALID_MESSAGE", "Give the image as image_b64 or blob_sha256.")


def _own_blob(ctx: Context, tenant_id: str, sha256: Any) -> bytes:
    """The bytes of a blob this tenant stored (an image it submitted before). Another tenant's
    blob is answered exactly like one that does not exist: naming a hash must not tell a tenant
    what others uploaded, nor get it an analysis of bytes it never had."""
    name = printable(sha256 if isinstance(sha256, str) else repr(sha256), 80)
    missing = ModerationError("BLOB_NOT_FOUND", f"No blob {name}.")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise missing
    with ctx.engine.connect() as conn:
        known = conn.execute(
            select(submissions.c.id)
            .where(and_(submissions.c.tenant_id == tenant_id, submissions.c.sha256 == sha256.lower()))
            .limit(1)
        ).first()
    if known is None:
        raise missing
    try:
        return ctx.blobs.get(sha256.lower())
    except ModerationError as exc:
        if exc.code == "BLOB_NOT_FOUND":
            raise missing from None
        raise


def _kept(message: Any) -> dict[str, str]:
    if not isinstance(message, dict):
        return {}
    return {k: printable(message[k], _KEPT_CHARS) for k in _KEPT if isinstance(message.get(k), str)}


def record_rejection(ctx: Context, tenant: str | None, message: Any, exc: ModerationError) -> None:
    """A dead-letter row and, for a known tenant, a `rejected` audit event: bounded facts only
    (never the image, a credential or fields the contract does not name)."""
    safe = _kept(message)
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(dead_letters).values(
                submission_id=None,
                task="submit",
                error=printable(f"{exc.code}: {exc.message}", 1000),
                attempts=1,
                payload=safe,
                created_at=utcnow(),
            )
        )
        if tenant:
            facts = {"code": exc.code, "message": printable(exc.message, 500), "puid": safe.get("external_id")}
            audit.append(conn, tenant, [audit.Event("rejected", actor="queue", automated=True, facts=facts)])
