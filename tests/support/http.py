"""Talking to the API the way a platform does (through the in-process TestClient)."""

from __future__ import annotations

from typing import Any

from tests.support.waiting import wait_until


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: Any, key: str, data: bytes, **fields: str) -> dict[str, Any]:
    headers = auth(key)
    if "idempotency_key" in fields:
        headers["Idempotency-Key"] = fields.pop("idempotency_key")
    r = client.post("/v1/submissions", headers=headers, files={"file": ("x.jpg", data)}, data=fields)
    assert r.status_code == 202, r.text
    return dict(r.json())


def wait_final(client: Any, key: str, sid: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/submissions/{sid}", headers=auth(key)).json()
        return body if body["status"] in ("decided", "in_review") else None

    return dict(wait_until(done, timeout, what=f"{sid} decided"))
