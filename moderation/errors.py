"""The one error type and its catalogue of stable codes, and the analyzer faults.

Every failure a client can see is a `ModerationError`; the API turns it into
`{"error": {"code": ..., "message": ...}}` in one place. Codes are part of the public
contract: add new ones, never rename. `TransientAnalyzerError` and `FatalAnalyzerError` are
the two faults an analyzer (or its model engine) may raise past its own error finding; they
live here, at the ground floor, so engines, analyzers, the flow and the workers share them.
"""

from __future__ import annotations

from typing import Any

# code -> (http status, what it means). README's error table must match (tests/unit/test_docs.py).
CATALOGUE: dict[str, tuple[int, str]] = {
    "INVALID_REQUEST": (422, "A field is missing or malformed."),
    "MISSING_FILE": (422, "The multipart field `file` is required."),
    "EMPTY_FILE": (422, "The uploaded file has no bytes."),
    "IMAGE_TOO_LARGE": (413, "The upload is over the configured byte limit."),
    "UNSUPPORTED_MEDIA_TYPE": (415, "Not a JPEG, PNG, GIF, WebP, BMP or TIFF image (checked by decoding)."),
    "IMAGE_CORRUPT": (422, "The image is truncated or cannot be decoded."),
    "IMAGE_TOO_MANY_PIXELS": (422, "Width x height is over the configured pixel limit."),
    "DECOMPRESSION_BOMB": (422, "Decoded size is out of proportion (pixels x frames over the limit)."),
    "TOO_MANY_FRAMES": (422, "The animation has more frames than allowed."),
    "UNKNOWN_POLICY": (422, "No policy with that id."),
    "POLICY_NOT_ALLOWED": (403, "The tenant may not use that policy (see its allowed_policies)."),
    "IDEMPOTENCY_CONFLICT": (409, "The idempotency key or external id was used for a different image."),
    "CONFLICT": (409, "The resource exists already."),
    "UNAUTHENTICATED": (401, "Missing or invalid API key."),
    "FORBIDDEN": (403, "The API key lacks the role for this endpoint."),
    "NOT_FOUND": (404, "No such resource for this tenant."),
    "METHOD_NOT_ALLOWED": (405, "Method not allowed on this path."),
    "ALREADY_CLAIMED": (409, "Another moderator holds this review task's claim."),
    "CLAIM_REQUIRED": (
        409,
        "The action needs your live claim on the task (claim it, or claim again: the lease ran out).",
    ),
    "TASK_CLOSED": (409, "The review task is decided already."),
    "CONFLICT_OF_INTEREST": (403, "You decided this submission before; someone else decides its appeal."),
    "REASON_REQUIRED": (
        422,
        "A reason is required for this decision (it differs from the automated one, or an appeal).",
    ),
    "APPEAL_OPEN": (409, "An appeal of this submission is open already."),
    "APPEAL_WINDOW_CLOSED": (422, "The window for appealing this decision has closed."),
    "NOT_DECIDED": (409, "The submission has no decision yet to appeal against."),
    "INVALID_MESSAGE": (422, "A queue-side submission message is malformed."),
    "BLOB_NOT_FOUND": (422, "A queue-side message names a blob that the store does not hold."),
    "BLOB_CORRUPT": (500, "A stored image's bytes do not match its hash (tampered with or damaged): an alarm."),
    "RATE_LIMITED": (
        429,
        "Over a rate limit (per key, per address, or the tenant's high-priority quota): see Retry-After.",
    ),
    "SERVICE_UNAVAILABLE": (503, "The database, broker or blob store is unreachable; retry with backoff."),
    "INTERNAL": (500, "Unexpected server error (a bug: bad input never yields this)."),
}


class ModerationError(Exception):
    """An error with a stable code, an HTTP status and a human message.

    `final` errors (bad input) are never retried by workers; the rest are transient.
    """

    def __init__(self, code: str, message: str | None = None, **data: Any) -> None:
        if code not in CATALOGUE:
            raise KeyError(f"unknown error code {code!r}")
        self.code = code
        self.http_status, default = CATALOGUE[code]
        self.message = message or default
        self.data = data
        super().__init__(f"{code}: {self.message}")

    @property
    def final(self) -> bool:
        return 400 <= self.http_status < 500

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            body["details"] = self.data
        return {"error": body}


class TransientAnalyzerError(Exception):
    """A fault worth retrying later (model server down, a batch timed out).

    `charge_attempt` False (a fault outside the input: the server is unreachable) gives the
    submission its attempt back; True (the server fails on this item each time) keeps it
    counted, so an input that always breaks the server ends in review instead of looping."""

    def __init__(self, message: str, charge_attempt: bool = False) -> None:
        super().__init__(message)
        self.charge_attempt = charge_attempt


class FatalAnalyzerError(Exception):
    """The analyzer can never work again in this process (a poisoned CUDA context, a hung model
    call): the worker process must exit, and its unacknowledged tasks go to another worker."""
