"""The autoscaling signals of /metrics (issue 14): per queue, how many messages wait in the broker
(`moderation_queue_depth`) and how long the oldest submission has waited for that queue's work
(`moderation_queue_oldest_seconds`), on Redis and on RabbitMQ alike."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from moderation.pipeline.stats import queue_ages
from tests.support.http import submit, wait_final
from tests.support.images import picture
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def gauge(text: str, name: str, queue: str) -> float | None:
    found = re.search(rf'^{name}{{queue="{re.escape(queue)}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def test_queue_signals_follow_the_work(client, keys, ctx, procs, broker) -> None:
    key = keys["submitter"]
    ids = [submit(client, key, picture(4400 + i), policy="test-cascade", caption="sleep=0")["id"] for i in range(3)]
    time.sleep(1.5)
    # No worker yet: everything waits for ingest, and the broker holds the messages.
    ages = queue_ages(ctx, ctx.engine)
    assert ages.get("ingest", 0) >= 1.0 and "analyze.cpu" not in ages, ages
    assert broker.queued("ingest") >= 1

    # A worker that only ingests: the items move on and wait for the analyzer queue instead.
    ingest_only = procs.worker(queues="maintenance,ingest")
    wait_until(lambda: "ingest" not in queue_ages(ctx, ctx.engine), 60, what="ingested")
    wait_until(lambda: broker.queued("analyze.cpu") >= 3, 30, what="analyze messages waiting")
    time.sleep(1.5)

    def analyzer_age_shown() -> str | None:
        text = str(client.get("/metrics").text)
        return text if (gauge(text, "moderation_queue_oldest_seconds", "analyze.cpu") or 0) >= 1 else None

    text = wait_until(analyzer_age_shown, 30, what="/metrics shows the analyzer queue's age")
    assert gauge(text, "moderation_queue_oldest_seconds", "ingest") == 0.0
    assert (gauge(text, "moderation_queue_depth", "analyze.cpu") or 0) >= 3

    # The whole pipeline: nothing waits anywhere once they are decided.
    ingest_only.stop()
    procs.worker()
    for sid in ids:
        wait_final(client, key, sid)
    wait_until(lambda: not queue_ages(ctx, ctx.engine), 30, what="nothing waiting for any queue")


def test_queue_ages_are_bounded_reads(ctx: Any) -> None:
    # A sample of 1 reads one row: the oldest active submission, whatever its queue.
    assert len(queue_ages(ctx, ctx.engine, sample=1)) <= 1
