"""One small in-process cache: entries expire a fixed time after they were set, and the map is
bounded (when full it is cleared: entries are cheap to reload, and a clear cannot be gamed into
keeping a chosen entry alive). Thread-safe. Used for API keys and the embedded verdict cache."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Missing:
    pass


MISSING = Missing()


class TTLCache(Generic[K, V]):
    def __init__(self, ttl_s: float, max_items: int) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._data: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | Missing:
        """The live value of `key`, or MISSING (a cached None is a value, not a miss)."""
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return MISSING
            if hit[0] <= time.monotonic():
                del self._data[key]
                return MISSING
            return hit[1]

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        with self._lock:
            if len(self._data) >= self.max_items and key not in self._data:
                self._data.clear()
            self._data[key] = (time.monotonic() + (self.ttl_s if ttl_s is None else ttl_s), value)
