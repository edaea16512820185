"""Fuzzing the upload path through the real HTTP API (in-process): multipart bodies of every
shape (missing, duplicated and misnamed file fields, odd file names and content types, broken
framing, other body types), form fields with control characters, NUL, invalid UTF-8 and huge
values, callback URLs with odd schemes, hosts, IDNA and ports, odd Idempotency-Keys, and the
hostile image bytes of the decoder suite. Every answer is 202 `{id, status}` or a 4xx in the
one error shape with a code of the catalogue; never a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from moderation.errors import CATALOGUE
from tests.fuzz import strategies
from tests.fuzz.known import pillow_struct_error, regression, skip_known
from tests.fuzz.meter import MIB, Meter
from tests.support.http import auth

pytestmark = pytest.mark.services

FILENAMES = ("x.jpg", "", "../../etc/passwd", "a\x00.png", 'q"uote.gif', "é.webp", "a" * 5000, "x;name=file", "\r\n")
CONTENT_TYPES = ("image/jpeg", "image/png", "application/octet-stream", "text/html", "image/svg+xml", "", "a/b; x=\x01")


@st.composite
def part(draw: st.DrawFn) -> tuple[str, str | None, str | None, bytes]:
    """One multipart part: (field name, file name or None, content type or None, payload)."""
    name = draw(
        st.sampled_from(["file", "file", "file", *strategies.FIELDS, "files", "File", "file[]", ""])
        | strategies.odd_text
    )
    is_file = name in ("file", "files", "File") or draw(st.booleans())
    filename = draw(st.sampled_from(FILENAMES) | strategies.odd_text) if is_file and draw(st.integers(0, 5)) else None
    ctype = draw(st.sampled_from(CONTENT_TYPES) | strategies.odd_text) if draw(st.booleans()) else None
    if name == "file" or (is_file and draw(st.booleans())):
        payload = draw(strategies.door_image)
    else:
        value = draw(strategies.form_value.get(name, strategies.any_text))
        payload = strategies.encode_text(value, draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "broken"])))
    return name, filename, ctype, payload


def quoted(value: str) -> bytes:
    # What a sloppy client sends: the value as UTF-8 between quotes, quotes and CR/LF escaped.
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r", "%0D")
        .replace("\n", "%0A")
        .encode("utf-8", "surrogatepass")
    )


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: bytes, close: bool) -> bytes:
    out = []
    for name, filename, ctype, payload in parts:
        disposition = b'Content-Disposition: form-data; name="' + quoted(name) + b'"'
        if filename is not None:
            disposition += b'; filename="' + quoted(filename) + b'"'
        head = disposition + (b"\r\nContent-Type: " + quoted(ctype) if ctype is not None else b"")
        out.append(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + payload + b"\r\n")
    return b"".join(out) + (b"--" + boundary + b"--\r\n" if close else b"")


# Header values as they travel: latin-1 bytes, no CR/LF (a client library refuses those).
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300).map(
    lambda t: t.encode("latin-1")
)
idempotency_key = st.one_of(st.uuids().map(lambda u: str(u).encode()), header_value, st.just(b"k" * 300))


@st.composite
def upload(draw: st.DrawFn) -> tuple[dict[str, bytes], bytes, list[bytes]]:
    """(headers, body, file payloads) of one POST /v1/submissions (without Authorization)."""
    boundary = draw(st.sampled_from([b"b0undary", b"x" * 70, b"-", b"a b", b"\xe9t\xe9"]))
    parts = draw(st.lists(part(), max_size=6))
    if draw(st.integers(0, 2)):  # mostly a well-formed upload, then odd fields around it
        parts.insert(draw(st.integers(0, len(parts))), ("file", "x.jpg", "image/jpeg", draw(strategies.door_image)))
    body = multipart(parts, boundary, close=draw(st.integers(0, 5)) > 0)
    kind = draw(st.sampled_from(["multipart"] * 6 + ["no-boundary", "wrong-boundary", "urlencoded", "json", "none"]))
    headers = {
        "multipart": {"Content-Type": b"multipart/form-data; boundary=" + boundary},
        "no-boundary": {"Content-Type": b"multipart/form-data"},
        "wrong-boundary": {"Content-Type": b"multipart/form-data; boundary=other"},
        "urlencoded": {"Content-Type": b"application/x-www-form-urlencoded"},
        "json": {"Content-Type": b"application/json"},
        "none": {},
    }[kind]
    if draw(st.integers(0, 3)) == 0:
        headers["Idempotency-Key"] = draw(idempotency_key)
    return headers, body, [payload for name, _, _, payload in parts if name in ("file", "files", "File")]


@pytest.fixture(scope="module")
def meter() -> Iterator[Meter]:
    # One request holds at most one decode (512 MiB by default) plus the 20 MB body and its copies.
    m = Meter("upload", item_rss_bound=512 * MIB + 192 * MIB, retained_rss_bound=256 * MIB)
    yield m
    m.finish()


def check_answer(r: Any) -> str:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    if r.status_code == 202:
        assert set(body) == {"id", "status"} and len(body["id"]) == 32, body
        return "202"
    assert 400 <= r.status_code < 500, r.status_code
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]) <= {"code", "message", "details"}
    code = body["error"]["code"]
    assert code in CATALOGUE and CATALOGUE[code][0] < 500, code
    assert isinstance(body["error"]["message"], str)
    return f"{r.status_code}:{code}"


GIF_CUT = regression("decoder-gif-truncated-descriptor.gif")
MULTIPART = {"Content-Type": b"multipart/form-data; boundary=b"}


@given(upload_request=upload())
@example(upload_request=(MULTIPART, b"--b\r\n\r\n--b--\r\n", []))
@example(upload_request=(MULTIPART, b'--b\r\nContent-Disposition: x; name="', []))
# Found by this suite (known.pillow_struct_error): struct.error out of Pillow's GIF plugin, a 500.
@example(upload_request=(MULTIPART, multipart([("file", "x.gif", "image/gif", GIF_CUT)], b"b", True), [GIF_CUT]))
def test_any_upload_gets_202_or_a_4xx(
    upload_request: tuple[dict[str, bytes], bytes, list[bytes]], fuzz_client, keys, meter
) -> None:
    headers, body, files = upload_request
    skip_known(any(pillow_struct_error(f) for f in files))
    headers = {**headers, "Authorization": f"Bearer {keys['submitter']}".encode()}
    with meter.item(f"({len(body)} bytes)"):
        r = fuzz_client.post("/v1/submissions", headers=headers, content=body)
        label = check_answer(r)
    meter.outcome(label)


@given(
    fields=strategies.form_fields(),
    image=strategies.door_image,
    idempotency=st.none() | idempotency_key,
)
def test_well_formed_uploads_with_hostile_fields(
    fields: dict[str, str], image: bytes, idempotency: bytes | None, fuzz_client, keys, meter: Meter
) -> None:
    """The framing a real client sends (httpx), every field odd: reaches the validators and the decoder."""
    skip_known(pillow_struct_error(image))
    headers: dict[str, Any] = auth(keys["submitter"])
    if idempotency is not None:
        headers["Idempotency-Key"] = idempotency
    data = {k: v.encode("utf-8", "surrogatepass") for k, v in fields.items()}
    with meter.item(f"({len(image)} bytes)"):
        r = fuzz_client.post("/v1/submissions", headers=headers, files={"file": ("x.jpg", image)}, data=data)
        label = check_answer(r)
    meter.outcome(label)
