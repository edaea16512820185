"""The internal Celery broker the integration suite runs on, and what tests look at in it.

`TEST_BROKER=redis` (the default) or `TEST_BROKER=rabbitmq` picks it; `make test` runs the
suite on Redis, `make test-rabbitmq` (and CI) on RabbitMQ too. The RabbitMQ runs get a vhost of
their own on the machine's server (created with rabbitmqctl, deleted afterwards), so a run never
sees another's queues. Tests ask the broker through `Broker`, never through Redis keys, so the
same test reads the same facts on both: how many messages wait in a queue, the submission ids in
the ingest messages, losing every queued message, restarting the server.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

KIND = os.environ.get("TEST_BROKER", "redis").lower()
RABBIT = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
QUEUES = ("ingest", "analyze.cpu", "analyze.gpu", "decide", "callbacks", "maintenance")

if KIND not in ("redis", "rabbitmq"):
    raise SystemExit(f"TEST_BROKER={KIND!r}: use redis or rabbitmq")


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout)
    return done.stdout


class Broker:
    """What the suite needs to see of the internal broker (Redis or RabbitMQ)."""

    kind = KIND

    def __init__(self, url: str, redis_client: Any = None, vhost: str | None = None) -> None:
        self.url = url
        self.redis = redis_client
        self.vhost = vhost

    # ---------------------------------------------------------------- reading

    def queued(self, queue: str) -> int:
        """Messages waiting (not handed to a worker) in `queue`, over all its priority levels."""
        if self.redis is not None:
            keys = [k for k in self.redis.keys(f"{queue}*") if self.redis.type(k) == b"list"]
            return sum(int(self.redis.llen(k)) for k in keys if _is_queue(k.decode(), queue))
        with self._channel() as channel:
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception:  # not declared yet: nothing waits in it
                return 0

    def total(self) -> int:
        return sum(self.queued(q) for q in QUEUES)

    def ingest_messages(self) -> list[list[str]]:
        """The submission ids of each waiting `ingest` message (read without consuming it)."""
        return [list(args[0]) for args in self._task_args("ingest")]

    def _task_args(self, queue: str) -> list[list[Any]]:
        out: list[list[Any]] = []
        if self.redis is not None:
            for key in self.redis.keys(f"{queue}*"):
                if self.redis.type(key) != b"list" or not _is_queue(key.decode(), queue):
                    continue
                for raw in self.redis.lrange(key, 0, -1):
                    envelope = json.loads(raw)
                    out.append(json.loads(base64.b64decode(envelope["body"]))[0])
            return out
        # basic_get without acknowledging, then closing the channel: every message goes back.
        with self._channel() as channel:
            try:
                channel.queue_declare(queue=queue, passive=True)
            except Exception:
                return out
            while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
                out.append(json.loads(message.body)[0])
        return out

    # ---------------------------------------------------------------- faults

    def lose_everything(self) -> None:
        """Every queued message gone: what a Redis restart without persistence does, or a
        RabbitMQ whose queues were purged (a lost node, an operator's mistake)."""
        if self.redis is not None:
            self.redis.flushdb()
            return
        for queue in QUEUES:
            self.drop(queue)

    def drop(self, queue: str) -> None:
        """Delete the messages waiting in `queue`."""
        if self.redis is not None:
            for key in list(self.redis.scan_iter(match=f"{queue}*")):
                if _is_queue(key.decode(), queue):
                    self.redis.delete(key)
            return
        with self._channel() as channel, suppress(Exception):  # not declared: nothing to drop
            channel.queue_purge(queue=queue)

    def restart(self) -> None:
        """Stop and start the broker server itself (its clients lose their connections)."""
        if self.redis is not None:
            from tests.support.services import restart_redis

            restart_redis()
            return
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        from kombu import Connection

        with Connection(self.url, connect_timeout=10) as conn:
            channel = conn.channel()
            try:
                yield channel
            finally:
                with suppress(Exception):
                    channel.close()


def _is_queue(key: str, queue: str) -> bool:
    """kombu keeps one Redis list per priority step: `queue`, then `queue` + sep + step."""
    return key == queue or (key.startswith(queue) and key[len(queue) :].lstrip("\x06\x16").isdigit())


@contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of this run's (guest may use it), deleted afterwards: its broker URL."""
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=120)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield f"{RABBIT}/{name}"
    finally:
        for _ in range(3):
            if (
                subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=120).returncode
                == 0
            ):
                break
            time.sleep(1)
