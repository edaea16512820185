"""Reaching behind the blob store, as an attacker with write access to it would: the raw bytes
stored under a name, on the filesystem or in the S3 bucket, without the store's checks."""

from __future__ import annotations

from typing import Any

from moderation.intake.blobs import FileBlobStore


def plant(store: Any, sha256: str, data: bytes) -> None:
    """Put `data` under `sha256`'s name directly (no hash check, no checksum)."""
    if isinstance(store, FileBlobStore):
        path = store.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        store.client.put_object(Bucket=store.bucket, Key=store.key(sha256), Body=data)


def raw(store: Any, sha256: str) -> bytes:
    """The bytes stored under `sha256`'s name, unchecked."""
    if isinstance(store, FileBlobStore):
        return store.path(sha256).read_bytes()
    return bytes(store.client.get_object(Bucket=store.bucket, Key=store.key(sha256))["Body"].read())


def location(store: Any, sha256: str) -> str:
    """Where the store keeps `sha256` (a path, or an s3:// URL)."""
    if isinstance(store, FileBlobStore):
        return str(store.path(sha256))
    return f"s3://{store.bucket}/{store.key(sha256)}"
