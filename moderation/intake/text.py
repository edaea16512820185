"""Checks on text that clients send (form fields, queue messages, names, labels)."""

from __future__ import annotations

import re

from moderation.errors import ModerationError

# NUL and other C0 controls (tab and newlines are fine in a caption): PostgreSQL refuses NUL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(name: str, value: object, limit: int) -> None:
    """Raise INVALID_REQUEST unless `value` is None or a string without control characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ModerationError("INVALID_REQUEST", f"{name} must be a string.", field=name)
    if len(value) > limit:
        raise ModerationError("INVALID_REQUEST", f"{name} is longer than {limit} characters.", field=name)
    if _CONTROL.search(value):
        raise ModerationError("INVALID_REQUEST", f"{name} contains control characters.", field=name)
