"""Dynamic micro-batching: concurrent requests in one process are gathered into one model call.

A GPU worker runs Celery with a thread pool (several tasks in flight, each blocked on its
future); `MicroBatcher` collects up to `max_batch` items, or whatever arrived within `max_wait_s`
of the first, and calls `run(items)` once on its own thread, so the model only ever sees one
batch at a time. `run` returns one outcome per item (a value or an exception): one bad item
fails only its own future. Every batch is recorded in `log` (and logged), which is what tests
and operators read to see how items were grouped.

With `group`, a batch holds only items of the oldest waiting item's group (for the VLM: the same
policy categories, so the same system turn, whose KV cache the batch then shares); items of
other groups wait, in order, for the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("moderation.analyzers.vlm.batch")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    size: int
    keys: tuple[str, ...]
    wait_ms: float  # from the first item's arrival to the model call
    run_ms: float


_STOP: Any = object()  # put by close(): the loop ends


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], list[R | BaseException]],
        max_batch: int = 16,
        max_wait_s: float = 0.05,
        key: Callable[[T], str] = lambda _item: "",
        log_size: int = 1000,
        parallel: int = 1,
        group: Callable[[T], Hashable] = lambda _item: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._key = key
        self._group = group
        self._queue: queue.Queue[tuple[T, Future[R], float]] = queue.Queue()
        self._held: deque[tuple[T, Future[R], float]] = deque()  # other groups' items, oldest first
        self.log: deque[BatchRecord] = deque(maxlen=log_size)
        # Batches run one at a time (a GPU), or up to `parallel` at once (a remote server).
        self._slots = threading.BoundedSemaphore(parallel)
        self._running: dict[str, float] = {}
        self._running_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="vlm-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        fut: Future[R] = Future()
        self._queue.put((item, fut, time.monotonic()))
        return fut

    def __call__(self, item: T, timeout: float | None = None) -> R:
        return self.submit(item).result(timeout)

    def running_for(self) -> float | None:
        """Seconds the oldest batch now running has been running (None: none is)."""
        with self._running_lock:
            return time.monotonic() - min(self._running.values()) if self._running else None

    def close(self) -> None:
        """Stop the loop once what is queued has been taken (its thread, and through it the
        analyzer and its model, can then be freed)."""
        self._closed = True
        self._queue.put(_STOP)

    def _gather(self) -> list[tuple[T, Future[R], float]]:
        first = self._held.popleft() if self._held else self._queue.get()
        if first is _STOP:
            return []
        batch = [first]
        group = self._group(batch[0][0])
        for entry in list(self._held):  # held items of this group first: they are the oldest
            if len(batch) < self.max_batch and self._group(entry[0]) == group:
                self._held.remove(entry)
                batch.append(entry)
        deadline = batch[0][2] + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                self._queue.put(entry)  # seen again once this batch is on its way
                break
            (batch if self._group(entry[0]) == group else self._held).append(entry)
        return batch

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            # A slot first, then the batch: items stay cancellable while earlier batches run.
            self._slots.acquire()
            batch = self._gather()
            if not batch and getattr(self, "_closed", False):
                self._slots.release()
                return
            # Items whose caller gave up (timed out and cancelled) are not run for nobody.
            batch = [b for b in batch if b[1].set_running_or_notify_cancel()]
            if not batch:
                self._slots.release()
                continue
            try:
                threading.Thread(target=self._run_batch, args=(batch,), name="vlm-batch", daemon=True).start()
            except BaseException as exc:  # no thread: fail these items, keep the loop alive
                self._slots.release()
                for _item, fut, _t in batch:
                    fut.set_exception(exc)

    def _run_batch(self, batch: list[tuple[T, Future[R], float]]) -> None:
        items = [b[0] for b in batch]
        batch_id = uuid.uuid4().hex[:12]
        started = time.monotonic()
        with self._running_lock:
            self._running[batch_id] = started
        try:
            try:
                outcomes = self._run(items)
                if len(outcomes) != len(items):
                    raise RuntimeError(f"batch run returned {len(outcomes)} outcomes for {len(items)} items")
            except BaseException as exc:  # the whole call failed: every item gets the error
                outcomes = [exc] * len(items)
            run_ms = (time.monotonic() - started) * 1000
            record = BatchRecord(
                batch_id, len(items), tuple(self._key(i) for i in items), (started - batch[0][2]) * 1000, run_ms
            )
            self.log.append(record)
            # Debug only: the engine logs each model call at info (the record operators read).
            log.debug("vlm batch=%s size=%d wait_ms=%.1f run_ms=%.1f", batch_id, len(items), record.wait_ms, run_ms)
            for (_item, fut, _t), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
        finally:
            with self._running_lock:
                self._running.pop(batch_id, None)
            self._slots.release()
