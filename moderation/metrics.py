"""Prometheus metrics of the API process (workers are observed through Flower's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUBMISSIONS = Counter("moderation_submissions_total", "Submissions received by the API", ["outcome", "code"])
SUBMIT_SECONDS = Histogram(
    "moderation_submit_seconds",
    "Time to validate, store and enqueue one upload",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BY_STATUS = Gauge("moderation_submissions_active", "Submissions not yet decided, by status", ["status"])
OLDEST_ACTIVE = Gauge(
    "moderation_oldest_active_seconds", "Age of the oldest submission not yet decided (stuck pipeline alarm)"
)
OPEN_REVIEW = Gauge("moderation_review_tasks_open", "Open human review tasks")
DEAD_LETTERS = Gauge("moderation_dead_letters", "Rows in the dead-letter table")
CALLBACKS = Gauge("moderation_callbacks", "Webhook deliveries not delivered, by status (pending, failed)", ["status"])
OLDEST_CALLBACK = Gauge(
    "moderation_oldest_pending_callback_seconds", "Age of the oldest pending webhook delivery (receiver down)"
)
QUEUE_DEPTH = Gauge("moderation_queue_depth", "Messages waiting in each broker queue", ["queue"])
QUEUE_OLDEST = Gauge(
    "moderation_queue_oldest_seconds",
    "Age of the oldest submission waiting for each queue's work (since its last progress): scale on it",
    ["queue"],
)
RECENT_DECISIONS = Gauge(
    "moderation_decisions_recent", "Decisions in the last activity window (5 min), by action", ["action"]
)
STAGE_LATENCY = Gauge(
    "moderation_stage_latency_seconds",
    "Upload to each stage's finding ('decision': to the automated decision), last 5 min",
    ["stage", "quantile"],
)
WORKER_IDLE = Gauge(
    "moderation_worker_last_progress_seconds", "Seconds since each worker process last finished a task", ["worker"]
)
REVIEW_BACKLOG = Gauge("moderation_review_backlog", "Review tasks not yet decided, by queue", ["queue"])
REVIEW_OLDEST = Gauge(
    "moderation_review_oldest_open_seconds", "Age of the oldest review task not yet decided, by queue", ["queue"]
)
REVIEW_BREACHES = Gauge(
    "moderation_review_sla_breaches", "Review tasks that went past their due time (SLA), by queue", ["queue"]
)
