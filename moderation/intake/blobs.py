"""Content-addressed blob store: originals kept by sha256 under a directory.

Path: <root>/<aa>/<bb>/<sha256>. Writes go to a temporary file in the same directory and are
renamed into place, so a reader never sees a partial blob; a blob that exists is not rewritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from moderation.errors import ModerationError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ModerationError("BLOB_NOT_FOUND", f"{sha256!r} is not a sha256 hex digest.")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        digest = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
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
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ModerationError("BLOB_NOT_FOUND", f"No blob {sha256}.") from exc

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()
