"""Content-addressed blob stores: originals kept by sha256, on a filesystem or in S3.

`BlobStore` is the port; `open_blob_store(settings)` picks the implementation from one setting,
`MODERATION_BLOB_URL`: `file:///dir` (`FileBlobStore`, this module: one host, or a shared POSIX
filesystem) or `s3://bucket/prefix` (`S3BlobStore` in `intake.s3blobs`: several hosts). Both keep
the same promises: `put` returns only once the bytes are durable (fsynced, or acknowledged by the
object store with a checksum it verified), so the submission row committed after it never names a
missing image; keys are `<aa>/<bb>/<sha256>`; nothing in the store is trusted: every read is
re-hashed (bytes planted under another image's name are a fault, never what the analyzers judge),
and a write over a blob whose bytes do not match its name replaces them. Which tenant may name
which blob is not the store's business: see `pipeline.queue_message`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from moderation.errors import ModerationError

if TYPE_CHECKING:
    from moderation.settings import Settings

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROBE = b"moderation blobs init probe"  # not an image: no upload can be stored under its name


class BlobCorrupt(ModerationError):
    """A blob's bytes do not hash to its name (tampered with, or damaged on disk). Final for the
    item (its analysis fails closed, to review) and an alarm for the operator."""

    def __init__(self, sha256: str, actual: str, why: str | None = None) -> None:
        super().__init__("BLOB_CORRUPT", why or f"Blob {sha256} holds bytes whose SHA-256 is {actual}.")

    @property
    def final(self) -> bool:
        return True  # reading it again gives the same bytes: never retried


class BlobStore(Protocol):
    """Where the originals live. Raises ModerationError BLOB_NOT_FOUND (no such blob),
    BlobCorrupt (bytes that do not hash to the name) or SERVICE_UNAVAILABLE (the store cannot be
    reached: transient, retried)."""

    url: str  # where it is, without credentials (logs, /readyz)

    def put(self, data: bytes, sha256: str | None = None, *, hashed_here: bool = False) -> str: ...

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def ping(self) -> None:
        """Raise unless the store can be reached (readiness)."""

    def init(self) -> list[str]:
        """Make the store ready (its folder or bucket) and check that this process can write, read
        back and delete an object there (`moderation blobs init`). Returns what it did."""


def blob_key(sha256: str) -> str:
    """`<aa>/<bb>/<sha256>`, the relative name of a blob in every store. Raises BLOB_NOT_FOUND
    for anything that is not a lowercase SHA-256 hex digest (no path tricks reach a store)."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ModerationError("BLOB_NOT_FOUND", f"{sha256!r} is not a sha256 hex digest.")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def checked_digest(data: bytes, sha256: str | None, hashed_here: bool) -> str:
    """The digest to store `data` under: computed here when not given; a given one must match,
    which is checked unless the caller computed it from these very bytes (`hashed_here`)."""
    digest = sha256 if sha256 is not None and hashed_here else hashlib.sha256(data).hexdigest()
    if sha256 is not None and sha256 != digest:
        raise ValueError(f"data hashes to {digest}, not {sha256}")
    return digest


def verified(sha256: str, data: bytes) -> bytes:
    """`data` if it hashes to `sha256`; else BlobCorrupt, logged as critical."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        log.critical("blob integrity: %s holds bytes hashing to %s (tampered or damaged)", sha256, actual)
        raise BlobCorrupt(sha256, actual)
    return data


def unavailable(kind: str, exc: BaseException) -> ModerationError:
    """The transient fault of a store that cannot be reached (503 at the API, retried by workers).
    Its message names the kind of store and the fault, never where the store is."""
    return ModerationError("SERVICE_UNAVAILABLE", f"The blob store ({kind}) is unreachable: {type(exc).__name__}.")


def open_blob_store(settings: Settings) -> BlobStore:
    """The store `settings.blob_url` names. Raises ValueError for a URL it cannot use."""
    url = settings.blob_store_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"MODERATION_BLOB_URL {url!r}: a file URL names a local path (file:///dir)")
        return FileBlobStore(Path(unquote(parts.path)), fsync=settings.blob_fsync)
    if parts.scheme == "s3":
        from moderation.intake.s3blobs import S3BlobStore

        return S3BlobStore.from_settings(settings)
    raise ValueError(f"MODERATION_BLOB_URL {url!r}: use file:///dir or s3://bucket/prefix")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FileBlobStore:
    """Blobs under a directory: `<root>/<aa>/<bb>/<sha256>`. Writes go to a temporary file in the
    same directory and are renamed into place, so a reader never sees a partial blob."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.url = self.root.resolve().as_uri()

    def path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def put(self, data: bytes, sha256: str | None = None, *, hashed_here: bool = False) -> str:
        """Store `data` under its SHA-256 (see `checked_digest`), fsynced before returning."""
        digest = checked_digest(data, sha256, hashed_here)
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
        return verified(sha256, data)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    def init(self) -> list[str]:
        self.ping()
        digest = self.put(PROBE)
        self.get(digest)
        self.path(digest).unlink()
        return [f"wrote, read and deleted a probe file under {self.url}"]
