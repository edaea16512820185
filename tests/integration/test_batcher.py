"""IngestBatcher on the real broker (Redis or RabbitMQ): no grouping when quiet, few messages when busy."""

from __future__ import annotations

import pytest

from moderation.queue import IngestBatcher, Publisher
from moderation.settings import Settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def test_quiet_publishes_at_once_busy_groups(service_env, broker) -> None:
    broker.lose_everything()
    publisher = Publisher(Settings())
    batcher = IngestBatcher(publisher, max_items=32, linger_s=2.0, min_rate=10)
    try:
        batcher.add("quiet-1")
        # Well before the 2 s linger: a lone submission is not held back.
        wait_until(lambda: broker.ingest_messages() == [["quiet-1"]], 1.5, 0.02, "immediate publish")
        broker.lose_everything()
        ids = [f"busy-{i}" for i in range(40)]
        for sid in ids:
            batcher.add(sid)
        wait_until(lambda: sum(len(m) for m in broker.ingest_messages()) == 40, 30, what="all published")
        messages = broker.ingest_messages()
        assert sorted(i for m in messages for i in m) == sorted(ids)
        assert len(messages) <= 5, messages  # grouped: up to 32 per message
    finally:
        batcher.close()
        broker.lose_everything()
