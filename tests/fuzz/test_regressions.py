"""What the bugs the fuzz suites found do beyond the wrong answer (the suites' explicit examples
check the answer itself; reproducers in regressions/, recognisers in `known`)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from moderation.gateway.core import Gateway
from tests.fuzz.known import REGRESSIONS, regression
from tests.support.http import auth

pytestmark = pytest.mark.services


GATEWAY = sorted(p.name for p in REGRESSIONS.glob("gateway-*.json"))


@pytest.mark.parametrize("name", GATEWAY)
def test_a_hostile_message_is_rejected_not_retried_forever(fuzz_ctx: Any, platform: dict[str, Any], name: str) -> None:
    """Published by any platform with a broker account, each must be rejected (dead-lettered) at
    once. Before the fix, the RecursionError (JSON nested past the parser's limit), the
    UnicodeEncodeError (a lone surrogate reaching the audit hash or the database driver) or the
    driver's ValueError (a NUL repeated in the rejection's message) was taken for a database
    fault and retried with backoff until the gateway stopped, while its consumer (one per
    gateway process, for every tenant) took nothing else."""
    body = regression(name)
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)  # the test's own bound: a retry loop ends here
    timer.start()
    try:
        started = time.monotonic()
        outcome = Gateway(fuzz_ctx, stop).handle_until_done(platform["account"].account, body, "amqp")
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert outcome is not None, f"the message was retried for {took:.1f} s and never stored or rejected"
    assert outcome.get("rejected") in ("INVALID_MESSAGE", "INVALID_REQUEST", "BLOB_NOT_FOUND") and took < 2.0, outcome


def test_a_deeply_nested_redis_envelope_is_not_a_broker_fault() -> None:
    """The Redis transport unwraps `{"body", "sig"}` with its own json.loads before the gateway
    does: a nested envelope must come back as a body to reject, not raise (which the consumer
    loop takes for Redis being down, leaving the item in the processing list for ever)."""
    from moderation.gateway.redis_lists import _unwrap

    raw = regression("gateway-deep-nesting.json")
    body, signature = _unwrap(raw)
    assert body == raw and signature is None


def test_a_bank_name_with_nul_is_a_4xx(fuzz_client: Any, keys: dict[str, str]) -> None:
    """regressions/api-bank-name-nul.txt: every route under /v1/banks/{name} passed the name to the
    database, whose driver raises ValueError on NUL: a 500 for any admin key."""
    method, path = regression("api-bank-name-nul.txt").decode().split()
    files = {"file": ("h.csv", b"pdq\n" + b"0" * 64)}
    r = fuzz_client.request(method, path, headers=auth(keys["admin"]), files=files)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:200]}"
