"""The S3-compatible blob store: originals as objects `<prefix>/<aa>/<bb>/<sha256>` in one bucket
(AWS S3, MinIO, Ceph RGW, …), for deployments where the API and the workers share no disk.

Every PUT carries the object's SHA-256 (`x-amz-checksum-sha256`), which the server checks against
the bytes it received before it answers: the 200 that `put` waits for means the object is stored
whole, so the submission row committed after it never names a missing or partial image. Content
addressing makes a PUT idempotent; it is always sent (never skipped because an object of that
name exists), so an object whose bytes were swapped is replaced by the next upload of the image,
as on the filesystem. Reads are re-hashed, and bounded by the upload limit (an object someone
enlarged cannot exhaust a worker). A store that cannot be reached is SERVICE_UNAVAILABLE: the
API answers 503 before committing anything, a worker retries the task.

boto3 is imported here only (the `s3` extra); its client is built lazily, once per process
(after a fork: a client must not cross one) and shared by threads, which boto3 clients allow.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from moderation.errors import ModerationError
from moderation.intake.blobs import PROBE, BlobCorrupt, blob_key, checked_digest, unavailable, verified
from moderation.settings import Settings

log = logging.getLogger(__name__)
# An object that is not there: S3's own error code, never a bare HTTP 404 (a proxy's or an
# ingress' default page would make every image final-missing). A missing bucket is not a missing
# blob either: a deployment fault (SERVICE_UNAVAILABLE, retried, /readyz says so), never a reason
# to send every image to review as unreadable.
_NO_SUCH_KEY = "NoSuchKey"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CHUNK = 1 << 20


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        max_bytes: int | None = None,
    ) -> None:
        if not _BUCKET.match(bucket):
            raise ValueError(f"{bucket!r} is not an S3 bucket name: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_bytes = max_bytes
        where = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.url = where + (f" at {_without_credentials(endpoint_url)}" if endpoint_url else "")
        self._client: Any = None
        self._probe: Any = None  # readiness: one attempt, short timeouts
        self._pid = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store MODERATION_BLOB_URL names. Raises ValueError for a URL with anything but a
        bucket and a prefix (credentials, a port, a query: they belong in other settings)."""
        parts = urlsplit(settings.blob_store_url)
        if parts.username or parts.password or parts.port or parts.query or parts.fragment or ":" in parts.netloc:
            raise ValueError(
                "MODERATION_BLOB_URL is s3://bucket/prefix only: credentials come from AWS_* or a role, "
                "the server from MODERATION_S3_ENDPOINT_URL, the region from MODERATION_S3_REGION"
            )
        return cls(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            timeout_s=settings.s3_timeout_s,
            max_attempts=settings.s3_max_attempts,
            max_bytes=settings.max_upload_bytes,
        )

    @property
    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = self._connect(self.timeout_s, self.max_attempts)
                    self._probe = self._connect(min(2.0, self.timeout_s), 1)
                    self._pid = os.getpid()
        return self._client

    def _connect(self, timeout_s: float, attempts: int) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("MODERATION_BLOB_URL=s3://… needs boto3: pip install 'moderation[s3]'") from exc
        config = Config(
            region_name=self.region,
            connect_timeout=min(3.0, timeout_s),  # a store that does not answer is down: say so soon
            read_timeout=timeout_s,
            retries={"max_attempts": attempts, "mode": "standard"},
            max_pool_connections=32,
            # A server of one's own (MinIO) is reached by path, not by a bucket host name.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # The SHA-256 is sent explicitly (below); no second checksum computed by the SDK.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of our own: boto3's default session is not safe to create clients from threads.
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def key(self, sha256: str) -> str:
        name = blob_key(sha256)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, data: bytes, sha256: str | None = None, *, hashed_here: bool = False) -> str:
        """Store `data` under its SHA-256 (see `checked_digest`); returns once the server has
        verified and stored it. Raises SERVICE_UNAVAILABLE when the store cannot be reached."""
        digest = checked_digest(data, sha256, hashed_here)
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(digest),
                Body=data,
                ChecksumSHA256=checksum,
                ContentType="application/octet-stream",
            )
        except Exception as exc:
            raise self._unavailable(exc) from exc
        return digest

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, re-hashed. Raises BLOB_NOT_FOUND, BlobCorrupt (an object that does
        not hash to its name, or larger than any upload may be) or SERVICE_UNAVAILABLE."""
        key = self.key(sha256)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            data = self._read(sha256, obj)
        except ModerationError:
            raise
        except Exception as exc:
            if _error_code(exc) == _NO_SUCH_KEY:
                raise ModerationError("BLOB_NOT_FOUND", f"No blob {sha256}.") from exc
            raise self._unavailable(exc) from exc
        return verified(sha256, data)

    def _read(self, sha256: str, obj: dict[str, Any]) -> bytes:
        """The body, in chunks: at most max_bytes (whatever Content-Length says; an object someone
        enlarged is refused, not read into memory) and within a deadline (a body that trickles
        in holds no thread for long: each read's timeout alone would not bound the whole)."""
        body = obj["Body"]
        limit = self.max_bytes
        try:
            size = obj.get("ContentLength")
            if limit is not None and size is not None and int(size) > limit:
                raise BlobCorrupt(sha256, "", f"Blob {sha256} is {size} bytes, over the upload limit: not read.")
            deadline = time.monotonic() + self.timeout_s * 3
            # read1: what one recv brings (a plain read(n) waits until n bytes have come, which a
            # trickling body can stretch to hours); the re-hash afterwards checks the whole.
            raw = getattr(body, "_raw_stream", None)
            read = getattr(raw, "read1", None) or body.read
            chunks: list[bytes] = []
            total = 0
            while chunk := read(_CHUNK):
                chunks.append(chunk)
                total += len(chunk)
                if limit is not None and total > limit:
                    raise BlobCorrupt(sha256, "", f"Blob {sha256} is over the upload limit: not read further.")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading blob {sha256} took over {self.timeout_s * 3:.0f} s")
            return b"".join(chunks)
        finally:
            body.close()

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            # A HEAD answer has no body, so no error code: 404 is all S3 says of a missing key.
            if _error_code(exc) in (_NO_SUCH_KEY, "404", "NotFound"):
                return False
            raise self._unavailable(exc) from exc
        return True

    def ping(self) -> None:
        """One quick attempt (readiness must answer within its own probe timeout)."""
        self.client  # noqa: B018 - builds both clients for this process
        self._probe.head_bucket(Bucket=self.bucket)

    def _unavailable(self, exc: BaseException) -> ModerationError:
        # The operator's log names the store; the client's message does not (where the images of
        # every tenant are kept is not theirs to know).
        log.warning("blob store %s unreachable: %s: %s", self.url, type(exc).__name__, exc)
        return unavailable("S3", exc)

    def init(self) -> list[str]:
        """Create the bucket if it is missing, then write, read back and delete a probe object:
        what `moderation blobs init` runs at deployment. Returns what it did."""
        done = []
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            where = {"LocationConstraint": self.region}
            extra = {} if self.region == "us-east-1" else {"CreateBucketConfiguration": where}
            self.client.create_bucket(Bucket=self.bucket, **extra)
            done.append(f"created bucket {self.bucket}")
        digest = self.put(PROBE)
        self.get(digest)  # re-hashed: raises unless the same bytes came back
        self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        done.append(f"wrote, read and deleted a probe object under {self.url}")
        return done


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return url
