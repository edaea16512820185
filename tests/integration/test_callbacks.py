"""Signed webhook callbacks to the platform (the receiver is a test double of the platform)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import auth, picture, wait_until

pytestmark = pytest.mark.services


class Receiver:
    """A platform endpoint that refuses its first delivery (503) and takes the next ones."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if not outer.calls else 200
                outer.calls.append((status, dict(self.headers), body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_decision_is_posted_signed_and_retried(client, keys, ctx, procs) -> None:
    receiver = Receiver()
    try:
        procs.worker()
        r = client.post(
            "/v1/submissions",
            headers=auth(keys["submitter"]),
            files={"file": ("x.jpg", picture(808))},
            data={"policy": "hash-only", "external_id": "cb-1", "callback_url": receiver.url},
        )
        sid = r.json()["id"]
        wait_until(lambda: len(receiver.calls) >= 2, 60, what="callback retried and delivered")
    finally:
        receiver.close()
    (first, _, _), (second, headers, body) = receiver.calls[:2]
    assert (first, second) == (503, 200)
    payload = json.loads(body)
    assert payload["id"] == sid and payload["external_id"] == "cb-1"
    assert payload["status"] == "decided" and payload["decision"]["action"] == "allow"
    fields = dict(part.split("=", 1) for part in headers["X-Moderation-Signature"].split(","))
    expected = hmac.new(
        ctx.settings.callback_secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
