"""The blob store trusts nothing on disk (issue 10, finding 4): every read is re-hashed, and a
write over a file whose bytes do not match its name replaces them. Before: trusted on first
write, never re-hashed, so bytes planted under another image's hash were what analyzers judged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moderation.errors import ModerationError
from moderation.intake.blobs import BlobCorrupt, BlobStore


def test_a_planted_blob_is_a_fault_on_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = BlobStore(tmp_path, fsync=False)
    real, planted = b"the real image", b"harmless-looking bytes"
    digest = store.put(real)
    store.path(digest).write_bytes(planted)
    with pytest.raises(BlobCorrupt) as exc:
        store.get(digest)
    assert exc.value.code == "BLOB_CORRUPT" and exc.value.final
    assert hashlib.sha256(planted).hexdigest() in exc.value.message
    assert any(r.levelname == "CRITICAL" for r in caplog.records)  # the alarm


def test_bytes_planted_before_the_upload_are_replaced(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, fsync=False)
    real = b"an image someone will upload"
    digest = hashlib.sha256(real).hexdigest()
    store.path(digest).parent.mkdir(parents=True)
    store.path(digest).write_bytes(b"planted first")  # trusted on first write, before the fix
    assert store.put(real) == digest
    assert store.get(digest) == real


def test_a_name_that_is_not_the_datas_hash_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, fsync=False)
    with pytest.raises(ValueError):
        store.put(b"data", "0" * 64)
    with pytest.raises(ModerationError) as exc:
        store.get("../../etc/passwd")
    assert exc.value.code == "BLOB_NOT_FOUND"
