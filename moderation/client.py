"""Python clients for platforms: HTTP (`Client`) and queue-side (`QueueProducer`).

from moderation.client import Client
c = Client("http://localhost:8000", api_key)
sub = c.submit("photo.jpg", external_id="post-123")
print(c.wait(sub["id"])["decision"])

from moderation.client import QueueProducer
QueueProducer("redis://localhost:6379/0").submit(api_key, "post-124", data=open("x.png","rb").read())
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx

from moderation.errors import ModerationError
from moderation.queue import Q_EXTERNAL, T_SUBMIT
from moderation.vocab import FINAL, Priority


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
    """Publish queue-side submissions (task `moderation.submit` on queue `ingest.external`).

    The message (JSON): {"api_key", "external_id", and "image_b64" (bytes, within the upload cap) or
    "blob_sha256" (a blob already in the shared store); optional "caption", "uploader_id",
    "callback_url", "priority", "policy"}. Rejections are recorded (dead letters + audit), not raised.
    """

    def __init__(self, broker_url: str | None = None) -> None:
        from moderation.queue import Publisher
        from moderation.settings import Settings

        settings = Settings() if broker_url is None else Settings(broker_url=broker_url)
        self.publisher = Publisher(settings)

    def submit(
        self,
        api_key: str,
        external_id: str,
        *,
        data: bytes | None = None,
        blob_sha256: str | None = None,
        priority: str = "normal",
        **fields: Any,
    ) -> None:
        if (data is None) == (blob_sha256 is None):
            raise ValueError("give exactly one of data or blob_sha256")
        message: dict[str, Any] = {"api_key": api_key, "external_id": external_id, "priority": priority, **fields}
        if data is not None:
            message["image_b64"] = base64.b64encode(data).decode()
        else:
            message["blob_sha256"] = blob_sha256
        if not self.publisher.send(T_SUBMIT, [message], Q_EXTERNAL, Priority.of(priority)):
            raise ModerationError("SERVICE_UNAVAILABLE", "The broker did not take the message.")
