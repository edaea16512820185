"""Waiting on conditions: tests poll for an observable state, never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Any,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
) -> Any:
    """Call `predicate` until it returns something true (returned), or fail after `timeout` seconds;
    `detail()` (a log tail, say) is added to that failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(message if detail is None else f"{message}:\n{detail()}")
        time.sleep(interval)
