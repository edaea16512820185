"""The Celery configuration on each broker (issue 14): RabbitMQ gets real priority queues (higher
first) and publisher confirms, Redis priority steps (lower first), a visibility timeout and a
fixed queue order; the same submission priority orders the same way on both."""

from __future__ import annotations

import pytest

from moderation.queue import AMQP_MAX_PRIORITY, PUBLISH_TIMEOUT_S, Publisher, broker_priority, celery_config, is_amqp
from moderation.settings import Settings
from moderation.vocab import Priority

RABBIT = "amqp://u:p@rabbit:5672/moderation"
REDIS = "redis://redis:6379/0"


def settings(broker: str) -> Settings:
    return Settings(database_url="postgresql://x@db/m", redis_url=REDIS, broker_url=broker)


@pytest.mark.parametrize("url", [RABBIT, "amqps://u:p@h/v", "pyamqp://h//"])
def test_rabbitmq_is_recognised(url: str) -> None:
    assert is_amqp(url) and not is_amqp(REDIS) and not is_amqp("filesystem://")


def test_rabbitmq_queues_are_priority_queues_with_confirms() -> None:
    conf = celery_config(settings(RABBIT))
    assert conf["task_queue_max_priority"] == AMQP_MAX_PRIORITY
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert conf["task_default_priority"] == Priority.NORMAL.amqp
    assert "visibility_timeout" not in conf["broker_transport_options"]  # RabbitMQ has none
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1


def test_redis_keeps_its_priority_steps_and_visibility_timeout() -> None:
    s = settings(REDIS)
    conf = celery_config(s)
    options = conf["broker_transport_options"]
    assert options["visibility_timeout"] == s.redelivery_after_s
    assert options["priority_steps"] == sorted(p.broker for p in Priority)
    assert options["queue_order_strategy"] == "priority"
    assert "task_queue_max_priority" not in conf


@pytest.mark.parametrize("url", [RABBIT, REDIS])
def test_high_is_served_before_normal_before_low_on_both(url: str) -> None:
    s = settings(url)
    order = [broker_priority(s, p) for p in ("high", "normal", "low")]
    # RabbitMQ delivers the highest number first, Redis' steps the lowest.
    expected = sorted(order, reverse=is_amqp(url))
    assert order == expected and len(set(order)) == 3
    assert all(0 <= v <= (AMQP_MAX_PRIORITY if is_amqp(url) else 9) for v in order)
    assert broker_priority(s, None) == broker_priority(s, "normal") == broker_priority(s, "bogus")


def test_the_publisher_sends_the_brokers_own_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    for url, high in ((RABBIT, 9), (REDIS, 0)):
        publisher = Publisher(settings(url))
        sent: dict[str, object] = {}
        monkeypatch.setattr(publisher.app, "send_task", lambda name, _sent=sent, **kw: _sent.update(kw))
        assert publisher.send("t", ["x"], "ingest", "high")
        assert sent["priority"] == high
        # A publisher confirm is awaited for a bounded time only (a blocked RabbitMQ holds nothing).
        assert sent.get("confirm_timeout") == (PUBLISH_TIMEOUT_S if url == RABBIT else None)
