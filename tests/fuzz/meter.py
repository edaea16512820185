"""Time and memory of each fuzzed item, checked against the suite's bounds and summed up.

`Meter.item()` wraps one input: it fails the example when the item took longer than
`ITEM_SECONDS` or raised the process's peak RSS (VmHWM, reset before the item through
/proc/self/clear_refs) by more than the suite's per-item bound. `Meter.summary()` gives the
figures a run reports (examples, outcomes, max time, RSS start/end/peak); with `FUZZ_STATS=path`
they are appended there as one JSON line per suite (`make fuzz` prints them).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MIB = 1 << 20
# Per item: generous on a loaded two-core CI box, yet far below what a hostile input costs
# when a bound is missing (issue 10: 41 s for a 1x60,000 PNG, 4 s to count a GIF's frames).
ITEM_SECONDS = float(os.environ.get("FUZZ_ITEM_SECONDS", "5"))


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def reset_peak() -> bool:
    """Make VmHWM the current RSS (Linux >= 4.0), so a peak is measured per item."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Bundle(SimpleNamespace):
    """The fixtures a fuzz test uses, under one short name: Hypothesis prints every argument of a
    failing example, and a Context's repr runs to pages."""

    def __repr__(self) -> str:
        return f"<fixtures: {', '.join(vars(self))}>"


class Meter:
    """Bounds and figures of one fuzz suite."""

    def __init__(self, suite: str, item_rss_bound: int, retained_rss_bound: int | None) -> None:
        self.suite = suite
        self.item_rss_bound = item_rss_bound
        self.retained_rss_bound = retained_rss_bound
        self.items = 0
        self.outcomes: Counter[str] = Counter()
        self.max_seconds = 0.0
        self.max_item_rss = 0
        self.rss_start = rss()
        self.rss_peak = self.rss_start
        self.per_item_peaks = reset_peak()
        self.maxima: dict[str, int] = {}

    @contextmanager
    def item(self, what: str = "") -> Iterator[None]:
        """One input. Raises AssertionError (after the body ran) when a bound is passed."""
        if self.per_item_peaks:
            reset_peak()
        before = rss()
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            grown = max(0, peak_rss() - before) if self.per_item_peaks else 0
            self.items += 1
            self.max_seconds = max(self.max_seconds, seconds)
            self.max_item_rss = max(self.max_item_rss, grown)
            self.rss_peak = max(self.rss_peak, peak_rss())
        assert seconds < ITEM_SECONDS, f"{self.suite}: one item took {seconds:.2f} s (bound {ITEM_SECONDS} s) {what}"
        assert grown <= self.item_rss_bound, (
            f"{self.suite}: one item raised peak RSS by {grown / MIB:.0f} MiB "
            f"(bound {self.item_rss_bound / MIB:.0f} MiB) {what}"
        )

    def outcome(self, label: str) -> None:
        self.outcomes[label] += 1

    def note_max(self, name: str, value: int) -> None:
        """A suite's own figure, reported as its maximum over the run."""
        self.maxima[name] = max(self.maxima.get(name, 0), value)

    def summary(self) -> dict[str, Any]:
        end = rss()
        return {
            "suite": self.suite,
            "items": self.items,
            "outcomes": dict(self.outcomes.most_common()),
            "max_item_s": round(self.max_seconds, 3),
            "max_item_rss_mib": round(self.max_item_rss / MIB, 1),
            "rss_start_mib": round(self.rss_start / MIB, 1),
            "rss_end_mib": round(end / MIB, 1),
            "rss_peak_mib": round(self.rss_peak / MIB, 1),
            "retained_mib": round((end - self.rss_start) / MIB, 1),
            "retained_bound_mib": None if self.retained_rss_bound is None else self.retained_rss_bound // MIB,
            **{f"max_{name}": value for name, value in sorted(self.maxima.items())},
            "profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        }

    def finish(self) -> dict[str, Any]:
        """Record the figures and check what the suite kept: RSS growth over the run is bounded
        (a leak per item would pass every per-item bound and still fail here). None: not checked
        here, where Hypothesis' own memory for large generated values dwarfs the code's (about
        400 KB per example for the hash lists' 140,000-character cells); a replay test checks
        those suites instead (`replay_is_flat`)."""
        figures = self.summary()
        path = os.environ.get("FUZZ_STATS")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(figures) + "\n")
        print(f"\nfuzz figures: {json.dumps(figures)}")
        retained = rss() - self.rss_start
        assert self.retained_rss_bound is None or retained <= self.retained_rss_bound, (
            f"{self.suite}: RSS grew by {retained / MIB:.0f} MiB over {self.items} items "
            f"(bound {self.retained_rss_bound / MIB:.0f} MiB)"
        )
        return figures


def replay_is_flat(inputs: list[Any], one: Any, passes: int = 2, bound: int = 16 * MIB) -> int:
    """Run `one` on every input once (the allocator's warm-up), then `passes` more times: RSS must
    not grow by more than `bound` (a leak per input would). Returns the growth in bytes."""
    assert inputs, "run with the suites that collect the inputs"

    def one_pass() -> None:
        for item in inputs:
            with contextlib.suppress(Exception):  # the suites judge the answers; this measures memory
                one(item)

    one_pass()
    before = rss()
    for _ in range(passes):
        one_pass()
    grown = rss() - before
    assert grown < bound, f"{grown / MIB:.1f} MiB kept over {passes * len(inputs)} replayed inputs"
    return grown
