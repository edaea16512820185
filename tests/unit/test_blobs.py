"""Both blob stores keep the same promises (issue 10, finding 4; issue 14): nothing in the store is
trusted (every read is re-hashed, and a write over an object whose bytes do not match its name
replaces them), names are SHA-256 digests only, and a store that cannot be reached is a transient
SERVICE_UNAVAILABLE, never a missing blob. The S3 store runs against a real S3-protocol server
(moto's server mode, tests.support.s3) over HTTP."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moderation.errors import ModerationError
from moderation.intake.blobs import BlobCorrupt, FileBlobStore, open_blob_store
from moderation.intake.s3blobs import S3BlobStore
from moderation.settings import Settings
from tests.support.blobs import plant, raw
from tests.support.s3 import CREDENTIALS


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def new_s3_store(endpoint: str, **kw: Any) -> S3BlobStore:
    store = S3BlobStore(f"unit-{secrets.token_hex(4)}", "some/prefix", endpoint_url=endpoint, **kw)
    store.init()
    return store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, aws_credentials: None) -> Iterator[Any]:
    if request.param == "file":
        yield FileBlobStore(tmp_path, fsync=False)
    else:
        yield new_s3_store(request.getfixturevalue("s3_endpoint"))


def test_a_planted_blob_is_a_fault_on_read(store: Any, caplog: pytest.LogCaptureFixture) -> None:
    real, planted = b"the real image", b"harmless-looking bytes"
    digest = store.put(real)
    plant(store, digest, planted)
    with pytest.raises(BlobCorrupt) as exc:
        store.get(digest)
    assert exc.value.code == "BLOB_CORRUPT" and exc.value.final
    assert hashlib.sha256(planted).hexdigest() in exc.value.message
    assert any(r.levelname == "CRITICAL" for r in caplog.records)  # the alarm


def test_bytes_planted_before_the_upload_are_replaced(store: Any) -> None:
    real = b"an image someone will upload"
    digest = hashlib.sha256(real).hexdigest()
    plant(store, digest, b"planted first")  # trusted on first write, before the fix
    assert not store.exists(digest) or raw(store, digest) == b"planted first"
    assert store.put(real) == digest
    assert store.get(digest) == real and raw(store, digest) == real


def test_a_name_that_is_not_the_datas_hash_is_refused(store: Any) -> None:
    with pytest.raises(ValueError):
        store.put(b"data", "0" * 64)
    for name in ("../../etc/passwd", "A" * 64, "0" * 63, "", "0" * 64 + "/x"):
        with pytest.raises(ModerationError) as exc:
            store.get(name)
        assert exc.value.code == "BLOB_NOT_FOUND"


def test_round_trip_and_missing(store: Any) -> None:
    data = os.urandom(300_000)
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.exists(digest) and store.get(digest) == data
    assert store.put(data) == digest  # idempotent
    other = "f" * 64
    assert not store.exists(other)
    with pytest.raises(ModerationError) as exc:
        store.get(other)
    assert exc.value.code == "BLOB_NOT_FOUND" and exc.value.final
    store.ping()


def test_s3_keys_are_content_addressed_under_the_prefix(s3_endpoint: str, aws_credentials: None) -> None:
    store = new_s3_store(s3_endpoint)
    digest = store.put(b"where does it go")
    listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"some/prefix/{digest[:2]}/{digest[2:4]}/{digest}"]  # the probe is gone


def test_an_enlarged_s3_object_is_not_read_into_memory(s3_endpoint: str, aws_credentials: None) -> None:
    store = new_s3_store(s3_endpoint, max_bytes=1000)
    digest = store.put(b"small")
    plant(store, digest, b"x" * 5000)
    with pytest.raises(BlobCorrupt, match="over the upload limit"):
        store.get(digest)


def test_an_unreachable_s3_is_transient_not_missing(aws_credentials: None) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3BlobStore("nowhere", endpoint_url=f"http://127.0.0.1:{port}", timeout_s=1, max_attempts=1)
    for call in (lambda: store.put(b"x"), lambda: store.get("a" * 64), lambda: store.exists("a" * 64)):
        with pytest.raises(ModerationError) as exc:
            call()
        assert exc.value.code == "SERVICE_UNAVAILABLE" and not exc.value.final
        assert exc.value.http_status == 503
    with pytest.raises(Exception):  # noqa: B017 - readiness: any fault is "not ready"
        store.ping()


def test_a_missing_bucket_is_a_deployment_fault_not_a_missing_blob(s3_endpoint: str, aws_credentials: None) -> None:
    # Every image would go to review as unreadable: it is retried instead, and /readyz says why.
    store = new_s3_store(s3_endpoint)
    digest = store.put(b"kept")
    other = S3BlobStore(store.bucket + "-gone", endpoint_url=s3_endpoint, max_attempts=1)
    with pytest.raises(ModerationError) as exc:
        other.get(digest)
    assert exc.value.code == "SERVICE_UNAVAILABLE" and not exc.value.final


def test_the_setting_picks_the_store(tmp_path: Path, s3_endpoint: str, aws_credentials: None) -> None:
    s = Settings(var_dir=tmp_path, blob_url=None)
    assert isinstance(open_blob_store(s), FileBlobStore)
    assert open_blob_store(s).root == tmp_path / "blobs"  # type: ignore[attr-defined]
    f = Settings(var_dir=tmp_path, blob_url=(tmp_path / "elsewhere").as_uri())
    assert open_blob_store(f).root == tmp_path / "elsewhere"  # type: ignore[attr-defined]
    s3 = open_blob_store(Settings(blob_url="s3://a-bucket/p/q/", s3_endpoint_url=s3_endpoint, max_upload_bytes=77))
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.max_bytes) == ("a-bucket", "p/q", s3_endpoint, 77)
    for bad in ("http://x/y", "file://otherhost/dir", "s3:///no-bucket", "blobs"):
        with pytest.raises(ValueError):
            open_blob_store(Settings(blob_url=bad))


def test_blobs_init_creates_the_bucket_and_checks_it(s3_endpoint: str, aws_credentials: None) -> None:
    store = S3BlobStore(f"init-{secrets.token_hex(4)}", "x", endpoint_url=s3_endpoint)
    with pytest.raises(Exception):  # noqa: B017 - no bucket yet
        store.ping()
    done = store.init()
    assert done[0].startswith("created bucket") and "probe" in done[1]
    store.ping()
    assert "Contents" not in store.client.list_objects_v2(Bucket=store.bucket)  # the probe was deleted
    assert store.init() == [done[1]]  # again: nothing to create


class _Server:
    """A tiny HTTP server on 127.0.0.1 that is not S3: `answer(handler)` writes the reply."""

    def __init__(self, answer: Any) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            do_PUT = do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_404_that_is_not_s3s_is_not_a_missing_blob(aws_credentials: None) -> None:
    # A proxy's or an ingress' default page must not make every image final-missing (to review).
    def not_found(h: Any) -> None:
        h.send_response(404)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "9")
        h.end_headers()
        h.wfile.write(b"not found")

    server = _Server(not_found)
    try:
        store = S3BlobStore("a-bucket", endpoint_url=server.url, max_attempts=1, timeout_s=2)
        with pytest.raises(ModerationError) as exc:
            store.get("a" * 64)
        assert exc.value.code == "SERVICE_UNAVAILABLE" and not exc.value.final
    finally:
        server.close()


def test_a_trickling_body_holds_no_thread_for_long(aws_credentials: None) -> None:
    import time

    def trickle(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    server = _Server(trickle)
    try:
        store = S3BlobStore("a-bucket", endpoint_url=server.url, max_attempts=1, timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(ModerationError) as exc:
            store.get("b" * 64)
        assert exc.value.code == "SERVICE_UNAVAILABLE"
        assert time.monotonic() - started < 5  # the deadline (3 x timeout), not 100 s of trickle
    finally:
        server.close()


def test_the_clients_message_does_not_say_where_the_store_is(aws_credentials: None) -> None:
    store = S3BlobStore(
        "secret-bucket", "p", endpoint_url="http://user:hunter2@127.0.0.1:9", timeout_s=0.5, max_attempts=1
    )
    assert "hunter2" not in store.url and "secret-bucket" in store.url  # the operator's log names it
    with pytest.raises(ModerationError) as exc:
        store.put(b"x")
    assert "secret-bucket" not in exc.value.message and "127.0.0.1" not in exc.value.message
    assert "hunter2" not in exc.value.message


@pytest.mark.parametrize(
    "url",
    [
        "s3://user:pw@bucket-a/p",
        "s3://bucket-a:9000/p",
        "s3://bucket-a/p?region=eu-west-1",
        "s3://bucket-a/p#x",
        "s3://Bucket_A/p",
        "s3://ab/p",
    ],
)
def test_a_blob_url_with_more_than_a_bucket_and_prefix_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_blob_store(Settings(blob_url=url))


def test_a_prefix_is_decoded_like_a_file_path() -> None:
    store = open_blob_store(Settings(blob_url="s3://bucket-a/pre%20fix/"))
    assert store.prefix == "pre fix"  # type: ignore[attr-defined]
