"""The suite's blob store: the filesystem, or with `TEST_BLOBS=s3` a local S3-protocol server
(devtools.s3server: moto's server mode) for every process (`make test-rabbitmq-s3`; CI runs it
beside the filesystem run)."""

from __future__ import annotations

import os

from devtools.s3server import CREDENTIALS, s3_env, s3_server

__all__ = ["BLOBS", "CREDENTIALS", "s3_env", "s3_server"]

BLOBS = os.environ.get("TEST_BLOBS", "file").lower()
if BLOBS not in ("file", "s3"):
    raise SystemExit(f"TEST_BLOBS={BLOBS!r}: use file or s3")
