"""Hypothesis profiles of the fuzz suites and the fixtures they share.

Profiles (`HYPOTHESIS_PROFILE`): `ci` (the default: 50 examples per test, derandomized, so a
CI failure reproduces exactly; about a minute for the four suites) and `long` (`make fuzz`:
2,000 examples per test, random, failures kept in var/hypothesis). Hypothesis' own deadline is
off in both: each suite checks time per item itself (`meter`), with a bound that says what a
hostile input must not cost rather than what a fast machine takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.support.paths import REPO

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(REPO / "var" / "hypothesis")),
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FUZZ_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Pillow warns about what hostile files contain (bad TIFF tags, truncated EXIF): expected here.
    for item in items:
        if FUZZ_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*"))


# Everything a fuzz run sends goes through the real admission middleware, but at rates no
# client would reach: the suites must see the decoders and validators, not 429s.
UNLIMITED = {
    "rate_limit_key_per_s": 1e9,
    "rate_limit_key_burst": 1e9,
    "rate_limit_ip_per_s": 1e9,
    "rate_limit_ip_burst": 1e9,
    "rate_limit_auth_failures_per_s": 1e9,
    "rate_limit_auth_failures_burst": 1e9,
    "high_priority_per_s": 1e9,
    "high_priority_burst": 1e9,
}


@pytest.fixture(scope="session")
def fuzz_ctx(ctx: Any) -> Any:
    """The session's context with the rate limits raised (same engine, blobs and broker)."""
    return dataclasses.replace(ctx, settings=ctx.settings.model_copy(update=UNLIMITED))


@pytest.fixture(scope="session")
def fuzz_client(fuzz_ctx: Any, keys: dict[str, str]) -> Iterator[Any]:
    """The real API in-process (TestClient), on `fuzz_ctx`; a server error is answered, not raised."""
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app

    with TestClient(create_app(fuzz_ctx.settings, fuzz_ctx), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def platform(fuzz_ctx: Any, keys: dict[str, str]) -> dict[str, Any]:
    """An `acme` platform's AMQP account, a Redis account's name (a transport mismatch), blobs
    acme stored and one only `other` stored, and the API keys a careless platform might embed."""
    from moderation.access.ingest import create_account, lookup
    from moderation.pipeline.accept import SubmissionRequest, accept
    from tests.support.images import picture

    suffix = secrets.token_hex(3)
    with fuzz_ctx.engine.begin() as conn:
        create_account(conn, "acme", f"fuzz-amqp-{suffix}", "amqp")
        create_account(conn, "acme", f"fuzz-redis-{suffix}", "redis")
        account = lookup(conn, f"fuzz-amqp-{suffix}")
    assert account is not None
    own = []
    for i, tenant in enumerate(("acme", "acme", "other")):
        req = SubmissionRequest(tenant_id=tenant, actor="fuzz", external_id=f"fuzz-seed-{suffix}-{i}")
        accept(fuzz_ctx, req, picture(900 + i))
        own.append(hashlib.sha256(picture(900 + i)).hexdigest())
    return {
        "account": account,
        "redis_name": f"fuzz-redis-{suffix}",
        "blobs": own,  # the last one is other's: answered like a missing blob
        "secrets": [keys["submitter"], keys["admin"], keys["other"]],
    }
