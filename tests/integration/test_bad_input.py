"""Every bad input gets its 4xx code and JSON shape; nothing is stored or queued for it."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from moderation.db.tables import submissions
from tests.support.http import auth
from tests.support.images import picture

pytestmark = pytest.mark.services


def huge_png(width: int, height: int) -> bytes:
    """A few KB of PNG that claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(min(height, 2000))) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_frames(n: int) -> bytes:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).convert("P") for _ in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=20)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = picture(77, size=(800, 600), quality=90)
    return data[: len(data) // 2]


CASES: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("empty", b"", {}, 422, "EMPTY_FILE"),
    ("text", b"hello, this is not an image\n" * 10, {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("random", os.urandom(4096), {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("truncated", truncated_jpeg, {}, 422, "IMAGE_CORRUPT"),
    ("pixels", lambda: huge_png(8000, 8000), {}, 422, "IMAGE_TOO_MANY_PIXELS"),
    ("bomb", lambda: huge_png(30000, 30000), {}, 422, "IMAGE_TOO_MANY_PIXELS"),
    ("frames", lambda: gif_frames(600), {}, 422, "TOO_MANY_FRAMES"),
    ("too_large", lambda: b"\xff\xd8" + os.urandom(21 * 1024 * 1024), {}, 413, "IMAGE_TOO_LARGE"),
    ("priority", lambda: picture(1), {"priority": "urgent"}, 422, "INVALID_REQUEST"),
    ("policy", lambda: picture(2), {"policy": "no-such-policy"}, 422, "UNKNOWN_POLICY"),
    ("callback", lambda: picture(3), {"callback_url": "ftp://x"}, 422, "INVALID_REQUEST"),
    ("callback-idna", lambda: picture(3), {"callback_url": "http://xn--zz.com/"}, 422, "INVALID_REQUEST"),
    ("callback-port", lambda: picture(3), {"callback_url": "http://[::1]x/"}, 422, "INVALID_REQUEST"),
    # Plain http and non-public addresses need the tenant's own receiver rules (acme has none).
    ("callback-http", lambda: picture(3), {"callback_url": "http://hooks.example.com/"}, 422, "INVALID_REQUEST"),
    ("callback-private", lambda: picture(3), {"callback_url": "https://10.0.0.1/"}, 422, "INVALID_REQUEST"),
    ("callback-metadata", lambda: picture(3), {"callback_url": "https://169.254.169.254/"}, 422, "INVALID_REQUEST"),
    ("callback-joiner", lambda: picture(3), {"callback_url": "https://a\u200db.example/"}, 422, "INVALID_REQUEST"),
    ("caption", lambda: picture(4), {"caption": "x" * 10_001}, 422, "INVALID_REQUEST"),
]


def count_rows(ctx: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(submissions)).scalar() or 0)


@pytest.mark.parametrize(("name", "payload", "fields", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_its_code(client, keys, ctx, broker, name, payload, fields, status, code):
    data = payload() if callable(payload) else payload
    broker.lose_everything()
    before = count_rows(ctx)
    r = client.post("/v1/submissions", headers=auth(keys["submitter"]), files={"file": ("f.jpg", data)}, data=fields)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert count_rows(ctx) == before, "a rejected input was stored"
    assert broker.total() == 0, "a rejected input was queued"


def test_missing_file_field(client, keys) -> None:
    r = client.post("/v1/submissions", headers=auth(keys["submitter"]), data={"external_id": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "MISSING_FILE"


def test_declared_oversize_body_is_refused_before_reading(client, keys) -> None:
    r = client.post(
        "/v1/submissions",
        headers={
            **auth(keys["submitter"]),
            "Content-Length": str(100 * 1024 * 1024),
            "Content-Type": "multipart/form-data; boundary=x",
        },
        content=b"--x--\r\n",
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "IMAGE_TOO_LARGE"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (64, 48), (10, 200, 30, 0)),
        lambda: Image.new("I;16", (64, 48), 40000),
        lambda: Image.new("LA", (64, 48), (120, 0)),
        lambda: Image.new("RGBA", (64, 48), (0, 0, 0, 0)),
        lambda: Image.new("P", (64, 48), 3),
        lambda: Image.new("1", (64, 48), 1),
        lambda: Image.new("RGB", (1, 1), (5, 5, 5)),
    ],
    ids=["cmyk", "16bit", "la", "rgba", "palette", "bilevel", "1x1"],
)
def test_odd_modes_are_accepted(client, keys, make) -> None:
    im = make()
    buf = io.BytesIO()
    im.save(buf, "TIFF" if im.mode in ("CMYK", "I;16") else "PNG")
    r = client.post(
        "/v1/submissions",
        headers=auth(keys["submitter"]),
        files={"file": ("f", buf.getvalue())},
        data={"policy": "hash-only"},
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/v1/submissions", {"data": {"caption": "hello\x00world"}}, 422, "INVALID_REQUEST"),
        ("post", "/v1/submissions", {"data": {"external_id": "a\x01b"}}, 422, "INVALID_REQUEST"),
        ("post", "/v1/submissions", {"data": {"callback_url": "http://x/\n"}}, 422, "INVALID_REQUEST"),
        ("get", "/v1/submissions/%00", {}, 404, "NOT_FOUND"),
        ("get", "/v1/audit/events?after_seq=100000000000000000000", {"auditor": True}, 422, "INVALID_REQUEST"),
        ("get", "/v1/audit/events?action=%00", {"auditor": True}, 422, "INVALID_REQUEST"),
    ],
    ids=["nul-caption", "control-external-id", "newline-url", "nul-path", "huge-int", "nul-query"],
)
def test_hostile_text_is_a_4xx_not_a_500(client, keys, method, path, kwargs, status, code) -> None:
    headers = auth(keys["auditor" if kwargs.pop("auditor", False) else "submitter"])
    if method == "post":
        kwargs["files"] = {"file": ("a.jpg", picture(9))}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_bank_admin_rejects_bad_values(client, keys) -> None:
    admin = auth(keys["admin"])
    assert client.post("/v1/banks", headers=admin, json={"name": "ok-bank\n", "kind": "bad"}).status_code == 422
    client.post("/v1/banks", headers=admin, json={"name": "val-bank", "kind": "bad"})
    long_label = client.post(
        "/v1/banks/val-bank/images", headers=admin, files=[("files", ("a.jpg", picture(10)))], data={"label": "x" * 300}
    )
    assert long_label.status_code == 422
    huge_field = b"pdq,label\n" + b"0" * 64 + b',"' + b"y" * 200_000 + b'"\n'
    r = client.post("/v1/banks/val-bank/hashes", headers=admin, files={"file": ("l.csv", huge_field)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_REQUEST"
    bad_phash = client.post(
        "/v1/banks/val-bank/hashes", headers=admin, files={"file": ("l.csv", b"pdq,phash\n" + b"0" * 64 + b",zz\n")}
    )
    assert bad_phash.status_code == 422
    r = client.delete("/v1/banks/val-bank/entries/100000000000000000000", headers=admin)
    assert r.status_code == 422
