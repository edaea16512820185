"""Shared fixtures: the real PostgreSQL and Redis of this machine, real Celery workers.

The internal broker is Redis, or RabbitMQ with TEST_BROKER=rabbitmq (tests.support.broker); the
blobs are on the filesystem, or on a local S3-protocol server with TEST_BLOBS=s3
(tests.support.s3). Every process the suite starts gets the same choice through `service_env`.

Fixtures only: the helpers they are built from, and that tests import, live in tests/support/.
Service tests skip when PostgreSQL or Redis is unreachable, unless MODERATION_REQUIRE_SERVICES=1
(see tests/support/services.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Helpers in tests/support assert too: give their failures pytest's introspection.
pytest.register_assert_rewrite("tests.support")

from tests.support.broker import KIND as BROKER_KIND  # noqa: E402
from tests.support.broker import Broker, rabbitmq_vhost  # noqa: E402
from tests.support.images import picture  # noqa: E402
from tests.support.paths import REPO  # noqa: E402
from tests.support.processes import Proc, Procs  # noqa: E402
from tests.support.s3 import BLOBS, s3_env, s3_server  # noqa: E402
from tests.support.services import CACHE_URL, REDIS_URL, scratch_database, unavailable  # noqa: E402
from tests.support.vlm import SCRIPTED_ANSWER  # noqa: E402

# ---------------------------------------------------------------- images


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {f"img{i}": picture(i) for i in range(40)}


# ---------------------------------------------------------------- services


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with scratch_database(f"moderation_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        unavailable("Redis", exc)
    cache = redis.Redis.from_url(CACHE_URL, socket_connect_timeout=5)
    client.flushdb()
    cache.flushdb()  # verdicts of an earlier run would be hits in this one
    yield client
    client.flushdb()
    cache.flushdb()


@pytest.fixture(scope="session")
def broker(redis_client: Any) -> Iterator[Broker]:
    """The internal broker of this run: the test Redis database, or a RabbitMQ vhost of its own."""
    if BROKER_KIND == "redis":
        yield Broker(REDIS_URL, redis_client=redis_client)
        return
    try:
        vhost = rabbitmq_vhost(f"moderation-test-{os.getpid()}")
        url = vhost.__enter__()
    except Exception as exc:
        unavailable("RabbitMQ (rabbitmqctl)", exc)
    try:
        yield Broker(url, vhost=url.rsplit("/", 1)[1])
    finally:
        vhost.__exit__(None, None, None)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local S3-protocol server (moto) for this run."""
    try:
        server = s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
        url = server.__enter__()
    except Exception as exc:
        unavailable("the local S3 server (moto_server)", exc)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def blob_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The blob settings of this run: nothing (the filesystem under MODERATION_VAR_DIR), or a
    fresh bucket on the local S3 server (made by `moderation blobs init`'s code)."""
    if BLOBS == "file":
        return {}
    env = s3_env(request.getfixturevalue("s3_endpoint"), f"moderation-test-{os.getpid()}")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from moderation.intake.blobs import open_blob_store
        from moderation.settings import Settings

        open_blob_store(Settings()).init()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return env


@pytest.fixture(autouse=True)
def fresh_rate_limits(request: pytest.FixtureRequest) -> None:
    """Each test starts with full rate-limit buckets: the limits are per client address, and
    every test calls from 127.0.0.1, so one test's unknown keys must not get the next one 429s."""
    if "redis_client" not in request.fixturenames:
        return
    client = request.getfixturevalue("redis_client")
    stale = list(client.scan_iter("moderation:rl:*", count=1000))
    if stale:
        client.delete(*stale)


@pytest.fixture(scope="session")
def policies_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policies")
    for f in (REPO / "policies").glob("*.yaml"):
        shutil.copy(f, d / f.name)

    def test_policy(name: str, stage: str) -> None:
        header = f"id: {name}\nextends: default\nqa_sample_rate: 0.0\non_uncovered: review\n"
        (d / f"{name}.yaml").write_text(header + "cascade:\n  - stage: banks\n  - stage: cache\n" + stage)

    test_policy(
        "test-cascade",
        "  - stage: caption\n    analyzer: tests.support.analyzers:CaptionAnalyzer\n    queue: analyze.cpu\n",
    )
    test_policy(
        "test-vlm",
        "  - stage: vlm\n    analyzer: moderation.analyzers.vlm:VlmAnalyzer\n    queue: analyze.gpu\n"
        "    requires: vlm\n    options: {prompt: risk-v1}\n",
    )
    shutil.copytree(REPO / "policies" / "prompts", d / "prompts")
    return d


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GLM-4.6V-architecture checkpoints saved with save_pretrained (no download):
    `random` answers garbage (the malformed-output path), `scripted` answers SCRIPTED_ANSWER
    (a weight double; see devtools.synthetic_vlm)."""
    import json

    from devtools.synthetic_vlm import save_tiny_model

    d = tmp_path_factory.mktemp("vlm")
    return {
        "random": save_tiny_model(d / "random"),
        "scripted": save_tiny_model(d / "scripted", answer=json.dumps(SCRIPTED_ANSWER)),
    }


@pytest.fixture(scope="session")
def service_env(
    pg_url: str,
    redis_client: Any,
    broker: Broker,
    blob_env: dict[str, str],
    policies_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """Environment for this process and every worker it starts; migrations applied once."""
    var = tmp_path_factory.mktemp("var")
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": REDIS_URL,
        **({"MODERATION_BROKER_URL": broker.url} if broker.kind == "rabbitmq" else {}),
        **blob_env,
        "MODERATION_CACHE_URL": CACHE_URL,
        "MODERATION_CACHE_KEY": "test-cache-mac-key",
        # The receivers' networks tenant admins may open through the API (the tests' receivers).
        "MODERATION_CALLBACK_TENANT_NETWORKS": '["127.0.0.0/8", "10.0.0.0/8", "::1/128", "192.0.2.0/24"]',
        "MODERATION_VAR_DIR": str(var),
        "MODERATION_POLICIES_DIR": str(policies_dir),
        "MODERATION_STALE_AFTER_S": "3",
        "MODERATION_RECONCILE_INTERVAL_S": "1",
        "MODERATION_MAX_ATTEMPTS": "3",
        "MODERATION_BLOB_FSYNC": "false",
        "MODERATION_BANK_CACHE_TTL_S": "0.2",
        # Workers load models lazily in tests (dozens of worker starts); the VLM tests turn the
        # production warm-up back on and check it.
        "MODERATION_WARMUP": "false",
        "PYTHONPATH": str(REPO),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    upgrade(Settings())
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ctx(service_env: dict[str, str]) -> Any:
    from moderation.pipeline.context import Context
    from moderation.settings import Settings

    return Context.build(Settings())


@pytest.fixture(scope="session")
def keys(ctx: Any) -> dict[str, str]:
    from moderation.access.keys import create_key

    with ctx.engine.begin() as conn:
        return {
            "submitter": create_key(conn, "acme", ["submitter"]),
            "auditor": create_key(conn, "acme", ["auditor"]),
            "admin": create_key(conn, "acme", ["admin"]),
            "other": create_key(conn, "other", ["submitter", "auditor"]),
        }


@pytest.fixture(scope="session")
def client(ctx: Any) -> Any:
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app

    with TestClient(create_app(ctx.settings, ctx)) as c:
        yield c


# ---------------------------------------------------------------- processes


@pytest.fixture
def procs(service_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Start workers/beat for one test; all are stopped afterwards (logs printed on failure)."""
    ps = Procs(service_env, tmp_path)
    yield ps
    ps.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for p in ps.all:
            print(f"==== {p.log.name}\n{p.text()[-4000:]}")


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One real Celery worker on all CPU queues, shared by the tests of a module."""
    ps = Procs(service_env, tmp_path_factory.mktemp("workers"))
    yield ps.worker()
    ps.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
