"""Content-addressed blob store: originals kept by sha256 under a directory.

Path: <root>/<aa>/<bb>/<sha256>. Writes go to a temporary file in the same directory and are
renamed into place, so a reader never sees a partial blob. Nothing in the directory is trusted:
every read is re-hashed (bytes planted under another image's name are a fault, never what the
analyzers judge), and a write over a blob whose bytes do not match its name replaces them.
Which tenant may name which blob is not the store's business: see `pipeline.queue_message`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from moderation.errors import ModerationError

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobCorrupt(ModerationError):
    """A blob's bytes do not hash to its name (tampered with, or damaged on disk). Final for the
    item (its analysis fails closed, to review) and an alarm for the operator."""

    def __init__(self, sha256: str, actual: str) -> None:
        super().__init__("BLOB_CORRUPT", f"Blob {sha256} holds bytes whose SHA-256 is {actual}.")

    @property
    def final(self) -> bool:
        return True  # reading it again gives the same bytes: never retried


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class BlobStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ModerationError("BLOB_NOT_FOUND", f"{sha256!r} is not a sha256 hex digest.")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, sha256: str | None = None, *, hashed_here: bool = False) -> str:
        """Store `data` under its SHA-256: computed here when not given; a given one must match,
        which is checked unless the caller computed it from these very bytes (`hashed_here`)."""
        digest = sha256 if sha256 is not None and hashed_here else hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise ValueError(f"data hashes to {digest}, not {sha256}")
        target = self.path(digest)
        if target.exists():
            try:
                if _digest(target) == digest:
                    return digest
            except OSError:
                pass
            log.critical("blob %s on disk does not match its name: replaced with the uploaded bytes", digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fdatasync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, re-hashed. Raises ModerationError BLOB_NOT_FOUND, or BlobCorrupt
        (logged as critical) when the bytes are not the ones the name promises."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ModerationError("BLOB_NOT_FOUND", f"No blob {sha256}.") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            log.critical("blob integrity: %s holds bytes hashing to %s (tampered or damaged)", sha256, actual)
            raise BlobCorrupt(sha256, actual)
        return data

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()
