"""Queue-side ingest: one `moderation.submit` message through the same validation and durability
path as HTTP. A rejected message is recorded and never retried."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from moderation import audit
from moderation.access.auth import Principal
from moderation.db.tables import dead_letters, utcnow
from moderation.errors import ModerationError
from moderation.pipeline.accept import SubmissionRequest, accept
from moderation.pipeline.context import Context


def submit_message(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    """Handle one queue-side submission (see README, "Queue-side ingest").

    Same validation and durability path as HTTP. A rejected message is recorded (dead-letter
    row, and a `rejected` audit event when the tenant is known) and never retried.
    """
    import base64
    import binascii

    tenant: str | None = None
    try:
        if not isinstance(message, dict):
            raise ModerationError("INVALID_MESSAGE", "The message must be a JSON object.")
        principal: Principal = ctx.keys.authenticate(f"Bearer {message.get('api_key', '')}")
        principal.require("submitter", "admin")
        tenant = principal.tenant_id
        external_id = message.get("external_id")
        if not isinstance(external_id, str) or not external_id:
            raise ModerationError("INVALID_MESSAGE", "external_id (a string) is required on the queue.")
        if message.get("image_b64") is not None:
            b64 = message["image_b64"]
            if not isinstance(b64, str) or len(b64) > ctx.settings.max_upload_bytes * 4 // 3 + 8:
                raise ModerationError("IMAGE_TOO_LARGE", "image_b64 is over the upload size cap.")
            try:
                data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ModerationError("INVALID_MESSAGE", "image_b64 is not valid base64.") from exc
        elif message.get("blob_sha256") is not None:
            data = ctx.blobs.get(str(message["blob_sha256"]))
        else:
            raise ModerationError("INVALID_MESSAGE", "Give the image as image_b64 or blob_sha256.")
        for name in ("caption", "uploader_id", "callback_url", "priority", "policy"):
            if message.get(name) is not None and not isinstance(message.get(name), str):
                raise ModerationError("INVALID_MESSAGE", f"{name} must be a string.")
        req = SubmissionRequest(
            tenant_id=principal.tenant_id,
            actor=principal.key_id,
            default_policy=principal.default_policy,
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
        _record_rejection(ctx, tenant, message, exc)
        return {"rejected": exc.code, "message": exc.message}


def _record_rejection(ctx: Context, tenant: str | None, message: Any, exc: ModerationError) -> None:
    safe = {k: v for k, v in message.items() if k not in ("api_key", "image_b64")} if isinstance(message, dict) else {}
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(dead_letters).values(
                submission_id=None,
                task="submit",
                error=f"{exc.code}: {exc.message}",
                attempts=1,
                payload=safe,
                created_at=utcnow(),
            )
        )
        if tenant:
            audit.append(
                conn,
                tenant,
                [
                    audit.Event(
                        "rejected",
                        actor="queue",
                        automated=True,
                        facts={"code": exc.code, "message": exc.message, "puid": safe.get("external_id")},
                    )
                ],
            )
