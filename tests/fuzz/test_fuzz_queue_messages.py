"""Fuzzing queue-side ingest: `submit_message` with JSON of any shape (wrong types, nesting, huge
strings, unknown and credential-bearing keys, base64 and blob_sha256 edge cases) and
`Gateway.handle` with arbitrary bytes. Each message is stored (`{id, status, created}`) or
rejected with a catalogue code, and never raises (only database faults may, and none happen
here). Every rejection leaves a dead letter whose payload is bounded and holds no credential.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import func, select

from moderation.access.ingest import IngestAccount
from moderation.db.tables import audit_events, dead_letters
from moderation.errors import CATALOGUE
from moderation.gateway.core import Gateway
from moderation.pipeline.queue_message import submit_message
from tests.fuzz import strategies
from tests.fuzz.known import deep_json, lone_surrogate, nul_echoed, pillow_struct_error, regression, skip_known
from tests.fuzz.meter import MIB, Bundle, Meter

pytestmark = pytest.mark.services

PAYLOAD_CHARS = 2048  # a dead letter's payload, as JSON text (issue 10, finding 12: it was unbounded)
ERROR_CHARS = 1000


def test_account_fixture_is_what_the_gateway_sees(fuzz_ctx: Any, platform: dict[str, Any]) -> None:
    account: IngestAccount = platform["account"]
    assert account.tenant_id == "acme" and account.transport == "amqp"
    assert Gateway(fuzz_ctx).account(account.account) == account


@pytest.fixture(scope="module")
def env(fuzz_ctx: Any, platform: dict[str, Any]) -> Iterator[Bundle]:
    # A message holds at most one decode (512 MiB by default) and its 27 MB of base64.
    meter = Meter("queue", item_rss_bound=512 * MIB + 192 * MIB, retained_rss_bound=256 * MIB)
    yield Bundle(ctx=fuzz_ctx, platform=platform, meter=meter)
    meter.finish()


def last_id(ctx: Any, table: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())


def check_outcome(outcome: Any) -> str:
    assert isinstance(outcome, dict), outcome
    if "rejected" in outcome:
        assert set(outcome) <= {"rejected", "message"}, outcome
        code = outcome["rejected"]
        assert code in CATALOGUE and CATALOGUE[code][0] < 500, code
        return f"rejected:{code}"
    assert set(outcome) == {"id", "status", "created"}, outcome
    assert len(outcome["id"]) == 32 and outcome["status"] and isinstance(outcome["created"], bool)
    return "stored" if outcome["created"] else "replayed"


def check_records(ctx: Any, since: tuple[int, int], secrets_: list[str], meter: Meter) -> None:
    """The dead letters and audit events this message left: bounded, and no credential in them."""
    dl_since, audit_since = since
    with ctx.engine.connect() as conn:
        letters = conn.execute(select(dead_letters).where(dead_letters.c.id > dl_since)).all()
        events = conn.execute(select(audit_events).where(audit_events.c.id > audit_since)).all()
    for row in letters:
        payload = json.dumps(row.payload, ensure_ascii=False)
        assert len(payload) < PAYLOAD_CHARS, f"dead letter payload of {len(payload)} characters"
        meter.note_max("dead_letter_payload_chars", len(payload))
        meter.note_max("dead_letter_payload_utf8_bytes", len(payload.encode("utf-8", "surrogatepass")))
        assert len(row.error) <= ERROR_CHARS
        for secret in secrets_:
            assert secret not in payload and secret not in row.error, "an API key reached a dead letter"
    for row in events:
        text = json.dumps(dict(row._mapping), default=str, ensure_ascii=False)
        for secret in secrets_:
            assert secret not in text, "an API key reached the audit log"


def b64_struct_error(message: Any) -> bool:
    """The decoder's struct.error (known.pillow_struct_error) reached through image_b64."""
    if not isinstance(message, dict) or not isinstance(message.get("image_b64"), str):
        return False
    try:
        return pillow_struct_error(base64.b64decode(message["image_b64"], validate=True))
    except ValueError:
        return False


def run(env: Bundle, call: Any) -> None:
    since = (last_id(env.ctx, dead_letters), last_id(env.ctx, audit_events))
    with env.meter.item():
        outcome = call()
    env.meter.outcome(check_outcome(outcome))
    check_records(env.ctx, since, env.platform["secrets"], env.meter)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    # The blobs are known only once the fixture ran: draw an index, resolved in the test.
    return draw(
        strategies.queue_message(strategies.door_image, ["<own0>", "<own1>", "<other>"], ["<key0>", "<key1>", "<key2>"])
    )


def resolve(value: Any, platform: dict[str, Any]) -> Any:
    """Put the fixture's real blob hashes and API keys where the strategy left placeholders."""
    names = {"<own0>": 0, "<own1>": 1, "<other>": 2}
    if isinstance(value, str):
        for placeholder, i in names.items():
            if placeholder in value or placeholder.upper() in value:
                sha = platform["blobs"][i]
                return value.replace(placeholder, sha).replace(placeholder.upper(), sha.upper())
        for i in range(3):
            value = value.replace(f"<key{i}>", platform["secrets"][i])
        return value
    if isinstance(value, list):
        return [resolve(v, platform) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, platform) for k, v in value.items()}
    return value


@given(message=messages())
@example(message={"external_id": "x", "image_b64": "YQ==", "api_key": "<key0>"})
@example(message={"external_id": "x", "blob_sha256": "<other>"})
@example(
    message={
        "external_id": "\U0001f600" * 256,
        "uploader_id": "\U0001f600" * 256,
        "priority": "\U0001f600" * 256,
        "policy": "\U0001f600" * 256,
        "blob_sha256": 1,
    }
)
@example(message=json.loads(regression("gateway-lone-surrogate.json")))
# Found by this suite (known.nul_echoed): a NUL in an unknown field's name or in blob_sha256 is
# repeated in the rejection's message, which PostgreSQL refuses: ValueError out of submit_message.
@example(message=json.loads(regression("gateway-nul-field-name.json")))
@example(message=json.loads(regression("gateway-nul-blob-name.json")))
def test_submit_message_stores_or_rejects(message: Any, env: Bundle) -> None:
    skip_known(lone_surrogate(message) or nul_echoed(message) or b64_struct_error(message))
    message = resolve(message, env.platform)
    run(env, lambda: submit_message(env.ctx, env.platform["account"], message))


@given(
    message=messages(),
    account=st.sampled_from(["own", "own", "own", "redis-on-amqp", "unknown", None]),
    ascii_only=st.booleans(),
)
def test_gateway_handles_any_json(message: Any, account: str | None, ascii_only: bool, env: Bundle) -> None:
    skip_known((ascii_only and lone_surrogate(message)) or nul_echoed(message) or b64_struct_error(message))
    p = env.platform
    names = {"own": p["account"].account, "redis-on-amqp": p["redis_name"], "unknown": "nobody-at-all"}
    body = strategies.message_body(resolve(message, p), ascii_only)
    gw = Gateway(env.ctx, threading.Event())
    run(env, lambda: gw.handle(names.get(account or ""), body, "amqp"))


@given(body=strategies.raw_body)
# Found by this suite (known.deep_json): JSON nested deeper than the parser's recursion limit
# raised RecursionError out of Gateway.handle, which the gateway takes for a database fault and
# retries forever (test_regressions.py): one 3 KB message wedged the consumer.
@example(body=regression("gateway-deep-nesting.json"))
# Found by this suite (known.lone_surrogate): a `\\ud800` escape in any text field raised
# UnicodeEncodeError (audit hash, database driver), retried forever like the above.
@example(body=regression("gateway-lone-surrogate.json"))
@example(body=regression("gateway-nul-field-name.json"))
@example(body=b'{"external_id": "a", "x": ' * 1200 + b"1" + b"}" * 1200)
def test_gateway_handles_any_bytes(body: bytes, env: Bundle) -> None:
    skip_known(deep_json(body) or lone_surrogate(body) or nul_echoed(body))
    gw = Gateway(env.ctx, threading.Event())
    run(env, lambda: gw.handle(env.platform["account"].account, body, "amqp"))
