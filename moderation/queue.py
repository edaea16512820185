"""Queue names, task names and the Celery configuration shared by producers and workers.

The API publishes tasks *by name* through `Publisher`, so it never imports worker code.
Messages carry IDs only, never image bytes. Platforms never publish here: queue-side ingest
comes through the gateway (`moderation.gateway`), on a broker account of their own.

Queues:
  ingest            hashes are ready; bank lookup, then route to the cascade (or decide inline)
  analyze.cpu       CPU analyzer stages
  analyze.gpu       GPU analyzer stages (one worker process per GPU)
  decide            policy evaluation after an analyzer stage, audit, review routing
  callbacks         signed webhook deliveries to platforms (their own worker, a thread pool)
  maintenance       beat tasks: the reconciler
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from moderation.settings import Settings
from moderation.vocab import Priority

log = logging.getLogger(__name__)

Q_INGEST = "ingest"
Q_CPU = "analyze.cpu"
Q_GPU = "analyze.gpu"
Q_DECIDE = "decide"
Q_CALLBACKS = "callbacks"
Q_MAINT = "maintenance"
# The order a CPU worker consumes in (Redis `queue_order_strategy: priority` reads the queues in
# this order, not round robin): work that finishes an item first — a decision — then cheap
# ingest (bank hits decide at once), then the expensive analyzers. With analyze.cpu first, every
# decision waited until the whole analyzer backlog had drained. `callbacks` is not among them:
# webhook deliveries wait on the platforms' receivers, so they run in a worker of their own (a
# thread pool, CALLBACK_POOL), where a slow receiver holds a callback thread, never an ingest slot.
CPU_QUEUES = (Q_MAINT, Q_DECIDE, Q_INGEST, Q_CPU)
CALLBACK_POOL = "threads"

# Queue-side ingest from platforms (moderation.gateway), on a broker of its own: the RabbitMQ
# exchange (and its queue) platforms' users may publish to, or each Redis account's list.
INGEST_EXCHANGE = "moderation.ingest"
INGEST_ROUTING_KEY = "submit"
INGEST_LIST_PREFIX = "moderation:ingest:"

T_INGEST = "moderation.ingest"
T_ANALYZE = "moderation.analyze"
T_DECIDE = "moderation.decide"
T_RECONCILE = "moderation.reconcile"
T_CALLBACK = "moderation.callback"
T_AUDIT_CHECKPOINT = "moderation.audit_checkpoint"
T_REVIEW_UPKEEP = "moderation.review_upkeep"

# RabbitMQ: every queue is declared as a priority queue with this many levels (x-max-priority;
# RabbitMQ advises few). A queue declared earlier without it must be deleted before switching:
# RabbitMQ refuses to redeclare a queue with other arguments (PRECONDITION_FAILED).
AMQP_MAX_PRIORITY = 9
PUBLISH_TIMEOUT_S = 2.0


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_priority(settings: Settings, priority: str | None) -> int:
    """A submission priority as the broker orders it: Redis' priority steps serve the lowest
    number first, RabbitMQ's priority queues the highest."""
    p = Priority.of(priority)
    return p.amqp if is_amqp(settings.celery_broker_url) else p.broker


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.celery_broker_url
    transport: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    elif url.startswith(("redis://", "rediss://")):
        transport = {
            "visibility_timeout": settings.redelivery_after_s,
            "priority_steps": sorted(p.broker for p in Priority),
            "queue_order_strategy": "priority",
        }
    elif is_amqp(url):
        # Durable queues, persistent messages (Celery's defaults) and publisher confirms: a publish
        # returns once the broker has taken the message. No visibility timeout: an unacknowledged
        # message comes back when its consumer's connection closes (a worker killed), and
        # RabbitMQ's consumer_timeout (30 min by default) must stay above every task time limit.
        transport = {"confirm_publish": True}
        extra = {
            "task_queue_max_priority": AMQP_MAX_PRIORITY,
            "task_default_priority": Priority.NORMAL.amqp,
        }
    return {
        **extra,
        "broker_url": url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Prefork children load their analyzers (models) before reporting alive: allow for it.
        "worker_proc_alive_timeout": 300,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": settings.task_events,
        "task_default_queue": Q_INGEST,
        "task_routes": {
            T_INGEST: {"queue": Q_INGEST},
            T_DECIDE: {"queue": Q_DECIDE},
            T_RECONCILE: {"queue": Q_MAINT},
            T_AUDIT_CHECKPOINT: {"queue": Q_MAINT},
            T_REVIEW_UPKEEP: {"queue": Q_MAINT},
            T_CALLBACK: {"queue": Q_CALLBACKS},
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        "beat_schedule": {
            "reconcile": {"task": T_RECONCILE, "schedule": settings.reconcile_interval_s},
            # Review leases that ran out go back to their queues; overdue tasks move up.
            "review-upkeep": {"task": T_REVIEW_UPKEEP, "schedule": settings.review_upkeep_interval_s},
            # Signed audit checkpoints, one per tenant (daily by default), where a key is set.
            **(
                {"audit-checkpoint": {"task": T_AUDIT_CHECKPOINT, "schedule": settings.audit_checkpoint_interval_s}}
                if settings.audit_signing_key
                else {}
            ),
        },
        "timezone": "UTC",
    }


class Publisher:
    """Sends pipeline tasks by name. A failed publish is logged, not raised: the row is already
    committed and the reconciler re-enqueues it, so the client still gets its 202."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.amqp = is_amqp(settings.celery_broker_url)
        self.app = Celery("moderation-producer", set_as_current=False)
        conf = celery_config(settings)
        if self.amqp:
            # A blocked connection (RabbitMQ stops reading from publishers in a memory or disk
            # alarm) answers nothing, not even the channel close after a confirm timed out: the
            # producer's socket reads and writes give up too. Producers only (workers consume on
            # their own connection, whose waits are the event loop's).
            bounded = {"read_timeout": PUBLISH_TIMEOUT_S, "write_timeout": PUBLISH_TIMEOUT_S}
            conf["broker_transport_options"] = {**conf["broker_transport_options"], **bounded}
        self.app.conf.update(conf)

    def send(self, task: str, args: list[Any], queue: str, priority: str = "normal") -> bool:
        # RabbitMQ's publisher confirm is awaited for at most PUBLISH_TIMEOUT_S: a broker that
        # blocks publishers (a memory or disk alarm) or a half-open link must not hold a request
        # or a task; the row is committed, the reconciler publishes it later.
        bound = {"timeout": PUBLISH_TIMEOUT_S, "confirm_timeout": PUBLISH_TIMEOUT_S} if self.amqp else {}
        try:
            self.app.send_task(task, args=args, queue=queue, priority=broker_priority(self.settings, priority), **bound)
        except Exception as exc:  # any broker fault (kombu passes some Redis errors through unwrapped)
            log.warning("publish of %s%s to %s failed (reconciler will retry): %s", task, args, queue, exc)
            return False
        return True

    def ingest(self, submission_ids: list[str], priority: str = "normal") -> bool:
        """One `ingest` message for a list of submissions (processed in one transaction)."""
        return self.send(T_INGEST, [submission_ids], Q_INGEST, priority)

    def ping(self) -> None:
        """Reach the broker once (raises when it cannot be reached): the readiness probe."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in `queue` (None when the broker cannot say)."""
        try:
            with self.app.connection_for_read() as conn:
                channel = conn.default_channel
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            return 0  # the broker does not know the queue (e.g. Redis restarted): nothing waits in it
        except Exception as exc:  # broker down, queue not declared yet, transport without counts
            log.debug("queue depth of %s unknown: %s", queue, exc)
            return None


class IngestBatcher:
    """Groups the `ingest` publishes of concurrent requests into one message per priority.

    Below `min_rate` submissions per second (counted over the last second) every ID goes out at
    once: no added latency when the pipeline is quiet. Above it, a message goes out when it
    holds `max_items` IDs or its oldest ID has waited `linger_s`, which turns many publishes and
    worker transactions into few when throughput matters. IDs are only published after their rows are committed, so an
    ID still waiting here when the process dies is not lost: the reconciler re-enqueues it.
    """

    def __init__(
        self, publisher: Publisher, max_items: int = 32, linger_s: float = 0.05, min_rate: float = 50.0
    ) -> None:
        self.publisher = publisher
        self.max_items = max(1, max_items)
        self.linger_s = max(0.0, linger_s)
        self.min_rate = min_rate
        self._arrivals: deque[float] = deque()
        self._cond = threading.Condition()
        self._pending: dict[str, list[str]] = {p: [] for p in Priority}
        self._since: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        atexit.register(self.close)

    def add(self, submission_id: str, priority: str = "normal") -> None:
        if self.linger_s == 0 or self.max_items == 1:
            self.publisher.ingest([submission_id], priority)
            return
        priority = Priority.of(priority)
        now = time.monotonic()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ingest-batcher", daemon=True)
                self._thread.start()
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] < now - 1.0:
                self._arrivals.popleft()
            # Quiet: due at once. Busy: due after the linger.
            start = now if len(self._arrivals) >= self.min_rate else now - self.linger_s
            self._since[priority] = min(self._since.get(priority, start), start)
            self._pending[priority].append(submission_id)
            self._cond.notify()

    def _due(self, now: float) -> list[tuple[str, list[str]]]:
        out = []
        for priority, ids in self._pending.items():
            if ids and (len(ids) >= self.max_items or now - self._since[priority] >= self.linger_s or self._closed):
                out.append((priority, ids[: self.max_items]))
                self._pending[priority] = ids[self.max_items :]
                if self._pending[priority]:
                    self._since[priority] = now
                else:
                    self._since.pop(priority, None)
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    due = self._due(time.monotonic())
                    if due or (self._closed and not any(self._pending.values())):
                        break
                    oldest = min(self._since.values(), default=None)
                    timeout = None if oldest is None else max(0.0, oldest + self.linger_s - time.monotonic())
                    self._cond.wait(timeout)
            for priority, ids in due:
                try:
                    self.publisher.ingest(ids, priority)
                except Exception:  # never let the sender die: the reconciler re-enqueues these rows
                    log.exception("ingest publish of %d ids failed", len(ids))
            if self._closed and not due:
                return

    def close(self) -> None:
        """Publish what is pending and stop (at process exit)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
