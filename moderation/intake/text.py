"""Checks on text that clients send (form fields, queue messages, names, labels)."""

from __future__ import annotations

import re

from moderation.errors import ModerationError

# NUL and other C0 controls (tab and newlines are fine in a caption): PostgreSQL refuses NUL. Lone
# surrogates (a JSON "\ud800" decodes to one) are not text: UTF-8 cannot encode them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


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
    if _SURROGATE.search(value):
        raise ModerationError("INVALID_REQUEST", f"{name} is not valid Unicode text.", field=name)


def printable(value: str, limit: int) -> str:
    """`value` cut to `limit` characters, with control characters and lone surrogates replaced:
    safe to log, to store and to hash, whatever a client sent."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("\ufffd", value[:limit]))
