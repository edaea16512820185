"""The broker's visibility timeout follows the tasks' time limits (issue 10, finding 8): Redis
redelivers an unacknowledged task after it, so a task still within its limit must never be
handed to a second worker. Before: a fixed 600 s, whatever the stages were allowed."""

from __future__ import annotations

from moderation.queue import celery_config
from moderation.settings import Settings


def test_visibility_timeout_is_twice_the_longest_time_limit() -> None:
    s = Settings(redis_url="redis://127.0.0.1:6379/0", analyze_time_limit_s=900, callback_timeout_s=5)
    timeout = celery_config(s)["broker_transport_options"]["visibility_timeout"]
    assert timeout >= 2 * 900 and timeout >= 2 * max(s.task_time_limits.values())
    slow_callbacks = Settings(redis_url="redis://127.0.0.1:6379/0", callback_timeout_s=400)
    assert celery_config(slow_callbacks)["broker_transport_options"]["visibility_timeout"] >= 2 * (400 * 3)
    # an operator may ask for longer, never for less than the limits need
    assert Settings(visibility_timeout_s=10).redelivery_after_s >= 2 * 300
    assert Settings(visibility_timeout_s=100_000).redelivery_after_s == 100_000


def test_tasks_carry_the_limits_the_timeout_was_derived_from() -> None:
    from workers import tasks
    from workers.app import settings

    for task, kind in ((tasks.ingest, "ingest"), (tasks.analyze, "analyze"), (tasks.decide, "decide")):
        assert task.time_limit == settings.task_time_limits[kind]
        assert task.soft_time_limit is not None and task.soft_time_limit < task.time_limit
    assert settings.redelivery_after_s >= 2 * max(t.time_limit for t in (tasks.ingest, tasks.analyze, tasks.decide))
