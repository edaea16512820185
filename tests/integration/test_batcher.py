"""IngestBatcher on the real Redis broker: no grouping when quiet, few messages when busy."""

from __future__ import annotations

import pytest

from moderation.queue import IngestBatcher, Publisher
from moderation.settings import Settings
from tests.support.services import ingest_messages
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def test_quiet_publishes_at_once_busy_groups(service_env, redis_client) -> None:
    redis_client.flushdb()
    publisher = Publisher(Settings())
    batcher = IngestBatcher(publisher, max_items=32, linger_s=2.0, min_rate=10)
    try:
        batcher.add("quiet-1")
        # Well before the 2 s linger: a lone submission is not held back.
        wait_until(lambda: ingest_messages(redis_client) == [["quiet-1"]], 1.5, 0.02, "immediate publish")
        redis_client.flushdb()
        ids = [f"busy-{i}" for i in range(40)]
        for sid in ids:
            batcher.add(sid)
        wait_until(lambda: sum(len(m) for m in ingest_messages(redis_client)) == 40, 30, what="all published")
        messages = ingest_messages(redis_client)
        assert sorted(i for m in messages for i in m) == sorted(ids)
        assert len(messages) <= 5, messages  # grouped: up to 32 per message
    finally:
        batcher.close()
        redis_client.flushdb()
