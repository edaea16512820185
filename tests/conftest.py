"""Shared fixtures: the real PostgreSQL and Redis of this machine, real Celery workers.

Service tests skip when PostgreSQL or Redis is unreachable, unless MODERATION_REQUIRE_SERVICES=1
(set by .ci/run and `make test`), which turns every such skip into a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from moderation.queue import CPU_QUEUES

REPO = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("MODERATION_REQUIRE_SERVICES", "").lower() in ("1", "true", "yes")
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} unreachable: {exc}"
    if REQUIRE:
        pytest.fail(f"{message} (MODERATION_REQUIRE_SERVICES=1: service tests must run)", pytrace=False)
    pytest.skip(message)


# ---------------------------------------------------------------- images


def picture(seed: int, size: tuple[int, int] = (640, 480), fmt: str = "JPEG", **save: Any) -> bytes:
    """A distinct, structured picture (shapes over a gradient): hashes are meaningful on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    c = rng.random((1, 1, 3))
    arr = (255 * (0.5 * x * c + 0.5 * y * (1 - c))).astype(np.uint8).repeat(1, 0)
    im = Image.fromarray(np.broadcast_to(arr, (h, w, 3)).copy())
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {f"img{i}": picture(i) for i in range(40)}


# ---------------------------------------------------------------- services


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A new empty PostgreSQL database (its URL), dropped afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=30)  # a fresh one: a test may restart the server
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


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
    client.flushdb()
    yield client
    client.flushdb()


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


# The answer the scripted tiny VLM gives to every image: a threat, read from a meme.
SCRIPTED_ANSWER = {
    "categories": {
        c: {"score": 0.01, "rationale": ""} | (
            {"score": 0.97, "rationale": "threat to meet outside"} if c == "harassment" else {}
        )
        for c in (
            "sexual", "nudity", "child_safety", "violence_gore", "weapons", "drugs", "hate",
            "harassment", "self_harm", "extremism", "scam_fraud", "spam", "privacy",
        )
    },
    "confidence": 0.9,
    "ocr_text": "MEET ME OUTSIDE / YOU WILL REGRET IT",
    "meme": True,
    "irony": False,
    "prompt_injection": False,
}  # fmt: skip


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
    pg_url: str, redis_client: Any, policies_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Environment for this process and every worker it starts; migrations applied once."""
    var = tmp_path_factory.mktemp("var")
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": REDIS_URL,
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
        # The platform's webhook receiver (a test double) listens on 127.0.0.1; the SSRF guard
        # is tested with this turned off.
        "MODERATION_CALLBACK_ALLOW_PRIVATE": "true",
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


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- processes


class Proc:
    """A real `celery worker` or `celery beat` subprocess with its own log file."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        ready: str | None,
        command: list[str] | None = None,
        ready_timeout: float = 60,
    ) -> None:
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [*(command or [sys.executable, "-m", "celery", "-A", "workers.app"]), *args],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready:
            self.wait_for(ready, ready_timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.p.poll() is not None:
                raise RuntimeError(f"process exited {self.p.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not seen in {timeout}s:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)  # any orphaned pool children
        self.handle.close()


class Procs:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.all, self.n = env, tmp, [], 0

    def worker(
        self,
        queues: str = ",".join(CPU_QUEUES),
        concurrency: int = 2,
        **extra_env: str,
    ) -> Proc:
        self.n += 1
        args = [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-n",
            f"test{self.n}@%h",
            "--loglevel",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        proc = Proc(args, {**self.env, **extra_env}, self.tmp / f"worker{self.n}.log", ready="ready.")
        self.all.append(proc)
        return proc

    def command(self, name: str, argv: list[str], ready: str, timeout: float = 120, **extra_env: str) -> Proc:
        """Any other process of the project (the `moderation` CLI, a fixture server)."""
        self.n += 1
        proc = Proc(argv, {**self.env, **extra_env}, self.tmp / f"{name}{self.n}.log", ready, [sys.executable], timeout)
        self.all.append(proc)
        return proc

    def beat(self) -> Proc:
        self.n += 1
        args = ["beat", "--loglevel", "info", "-s", str(self.tmp / f"beat{self.n}-schedule")]
        proc = Proc(args, self.env, self.tmp / f"beat{self.n}.log", ready="beat: Starting")
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.all:
            p.stop()


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


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
