"""RabbitMQ as the internal broker, where it differs from Redis (issue 14). Runs on every suite
run, whatever TEST_BROKER says, on a vhost of its own on the machine's RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from moderation.queue import Publisher
from moderation.settings import Settings
from tests.support.broker import Broker, rabbitmq_vhost, rabbitmqctl
from tests.support.services import unavailable

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    try:
        with rabbitmq_vhost(f"moderation-rmq-{os.getpid()}") as url:
            yield url
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable("RabbitMQ (rabbitmqctl)", exc)


def test_a_blocked_broker_holds_a_publisher_for_seconds_not_forever(vhost_url: str) -> None:
    """RabbitMQ in a memory alarm stops reading from publishers: no confirm, not even the close of
    the channel comes back. The API's publish gives up within a bound and returns False (the row
    is committed; the reconciler publishes it later), instead of holding the request."""
    publisher = Publisher(Settings(database_url="postgresql://unused@127.0.0.1/none", broker_url=vhost_url))
    assert publisher.send("moderation.ingest", [["before"]], "ingest")
    restored = threading.Event()

    def restore(after: float) -> None:
        if not restored.wait(after):
            rabbitmqctl("set_vm_memory_high_watermark", "0.4")

    rabbitmqctl("set_vm_memory_high_watermark", "0")  # every publisher blocked
    guard = threading.Thread(target=restore, args=(60,), daemon=True)  # never leave the broker blocked
    guard.start()
    try:
        started = time.monotonic()
        assert publisher.send("moderation.ingest", [["blocked"]], "ingest") is False
        assert time.monotonic() - started < 20
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        restored.set()
    assert publisher.send("moderation.ingest", [["after"]], "ingest")  # works again once unblocked
    waiting = Broker(vhost_url).ingest_messages()
    assert ["before"] in waiting and ["after"] in waiting


def test_every_queue_is_a_priority_queue(vhost_url: str) -> None:
    publisher = Publisher(Settings(database_url="postgresql://unused@127.0.0.1/none", broker_url=vhost_url))
    for queue in ("ingest", "analyze.cpu", "decide"):
        assert publisher.send("moderation.noop", [queue], queue)
    listed = rabbitmqctl("list_queues", "-p", vhost_url.rsplit("/", 1)[1], "name", "arguments", "durable")
    rows = {line.split("\t")[0]: line for line in listed.splitlines() if "\t" in line}
    for queue in ("ingest", "analyze.cpu", "decide"):
        assert "x-max-priority" in rows[queue] and rows[queue].rstrip().endswith("true"), rows[queue]
