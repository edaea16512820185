"""Python clients for platforms: HTTP (`Client`) and queue-side (`QueueProducer`).

from moderation.client import Client
c = Client("http://localhost:8000", api_key)
sub = c.submit("photo.jpg", external_id="post-123")
print(c.wait(sub["id"])["decision"])

from moderation.client import QueueProducer
QueueProducer("amqp://acme-ingest:pw@localhost/moderation-ingest").submit("post-124", data=open("x.png","rb").read())
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx

from moderation.errors import ModerationError
from moderation.queue import INGEST_EXCHANGE, INGEST_LIST_PREFIX, INGEST_ROUTING_KEY
from moderation.vocab import FINAL


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise ClientError(response.status_code, err.get("code", "HTTP_ERROR"), err.get("message", response.text))
        return dict(body)

    def submit(
        self,
        image: str | Path | bytes,
        *,
        external_id: str | None = None,
        caption: str | None = None,
        uploader_id: str | None = None,
        callback_url: str | None = None,
        priority: str = "normal",
        policy: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> dict[str, Any]:
        if isinstance(image, bytes):
            data, name = image, filename or "upload"
        else:
            data, name = Path(image).read_bytes(), filename or Path(image).name
        fields = {
            k: v
            for k, v in {
                "external_id": external_id,
                "caption": caption,
                "uploader_id": uploader_id,
                "callback_url": callback_url,
                "priority": priority,
                "policy": policy,
            }.items()
            if v is not None
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/v1/submissions", files={"file": (name, data)}, data=fields, headers=headers))

    def get(self, submission_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/submissions/{submission_id}"))

    def wait(self, submission_id: str, timeout: float = 60.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll until the submission is decided (or routed to review). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            sub = self.get(submission_id)
            if sub["status"] in FINAL:
                return sub
            if time.monotonic() > deadline:
                raise TimeoutError(f"{submission_id} still {sub['status']} after {timeout}s")
            time.sleep(interval)

    def audit_verify(self) -> dict[str, Any]:
        return self._json(self.http.get("/v1/audit/verify"))

    def audit_events(self, **filters: Any) -> dict[str, Any]:
        return self._json(self.http.get("/v1/audit/events", params=filters))


class QueueProducer:
    """Publish queue-side submissions as a platform, on the broker account the operator gave it
    (`moderation ingest add`): no API key travels in the message; the broker says who sent it.

    - RabbitMQ: `QueueProducer("amqp://<account>:<password>@host/<ingest vhost>")` publishes to the
      `moderation.ingest` exchange with the `user_id` property (the broker checks it).
    - Redis: `QueueProducer("redis://<account>:<password>@host:6379/0", secret="isec_…")` pushes
      an HMAC-signed envelope to the account's own list.

    The message (JSON): {"external_id", and "image_b64" (bytes, within the upload cap) or
    "blob_sha256" (an image this tenant submitted before); optional "caption", "uploader_id",
    "callback_url", "priority", "policy"}. Rejections are recorded (dead letters + audit), not raised.
    """

    def __init__(self, url: str, secret: str | None = None) -> None:
        from urllib.parse import unquote, urlsplit

        self.url = url
        self.account = unquote(urlsplit(url).username or "")
        self.redis = url.startswith(("redis://", "rediss://"))
        if not self.account:
            raise ValueError("the URL must name the platform's broker account (scheme://account:password@host)")
        if self.redis and not secret:
            raise ValueError("Redis ingest needs the account's signing secret")
        self.secret = secret

    @staticmethod
    def message(external_id: str, data: bytes | None, blob_sha256: str | None, **fields: Any) -> bytes:
        if (data is None) == (blob_sha256 is None):
            raise ValueError("give exactly one of data or blob_sha256")
        message: dict[str, Any] = {"external_id": external_id, **{k: v for k, v in fields.items() if v is not None}}
        if data is not None:
            message["image_b64"] = base64.b64encode(data).decode()
        else:
            message["blob_sha256"] = blob_sha256
        return json.dumps(message, separators=(",", ":")).encode()

    def submit(
        self,
        external_id: str,
        *,
        data: bytes | None = None,
        blob_sha256: str | None = None,
        priority: str = "normal",
        **fields: Any,
    ) -> None:
        """Publish one submission; returns once the broker has taken it (publisher confirms).
        Raises ModerationError SERVICE_UNAVAILABLE when it did not."""
        body = self.message(external_id, data, blob_sha256, priority=priority, **fields)
        try:
            if self.redis:
                self._push(body)
            else:
                self._publish(body)
        except Exception as exc:
            raise ModerationError("SERVICE_UNAVAILABLE", f"The broker did not take the message: {exc}") from exc

    def _publish(self, body: bytes) -> None:
        from kombu.connection import Connection

        with Connection(self.url, transport_options={"confirm_publish": True}) as conn:
            producer = conn.Producer(auto_declare=False)
            producer.publish(
                body,
                exchange=INGEST_EXCHANGE,
                routing_key=INGEST_ROUTING_KEY,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                user_id=self.account,
                retry=False,
            )

    def _push(self, body: bytes) -> None:
        import hashlib
        import hmac

        import redis

        assert self.secret is not None
        sig = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        envelope = json.dumps({"body": body.decode(), "sig": sig})
        redis.Redis.from_url(self.url, socket_timeout=10).rpush(f"{INGEST_LIST_PREFIX}{self.account}", envelope)
