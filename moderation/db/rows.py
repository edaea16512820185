"""Typed views of the rows that cross modules. SQLAlchemy hands back untyped `Row`s; functions
that take a submission row say which columns they read by taking a `SubmissionRow`."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class SubmissionRow(Protocol):
    """A row of `submissions` (every column, as `select(submissions)` returns it)."""

    id: str
    tenant_id: str
    external_id: str | None
    source: str
    sha256: str
    phash: str | None
    pdq: str | None
    format: str
    width: int
    height: int
    frames: int
    byte_size: int
    caption: str | None
    uploader_id: str | None
    callback_url: str | None
    priority: str
    policy_id: str
    status: str
    attempts: int
    request_ip: str | None
    api_key_id: str | None
    created_at: datetime
    updated_at: datetime
