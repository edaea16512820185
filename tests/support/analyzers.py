"""A test-only analyzer whose output is dictated by the submission's caption.

Caption grammar (`;`-separated): `hate=0.95` sets a score, `conf=0.3` the confidence,
`inject` the prompt-injection flag, `fail` raises (like unparseable model output),
`crash` kills the worker process (a poison input), `fatal` raises FatalAnalyzerError, `sleep=2` slows it down.
"""

from __future__ import annotations

import os
import signal
import time

from moderation.analyzers.base import AnalysisInput, Analyzer, Finding
from moderation.errors import FatalAnalyzerError


class CaptionAnalyzer(Analyzer):
    name = "caption"
    version = "test-1"

    def __init__(self, covered: list[str] | None = None) -> None:
        self.covered = covered

    def analyze(self, item: AnalysisInput) -> Finding:
        scores: dict[str, float] = {}
        confidence = 0.95
        flags: dict[str, bool] = {}
        for part in (item.caption or "").split(";"):
            part = part.strip()
            if not part:
                continue
            if part == "fail":
                raise ValueError("unparseable model output: 'I cannot help with that'")
            if part == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if part == "fatal":  # the analyzer is unusable in this process (e.g. a poisoned CUDA context)
                raise FatalAnalyzerError("device-side assert triggered")
            if part == "inject":
                flags["prompt_injection"] = True
                continue
            key, _, value = part.partition("=")
            if key == "conf":
                confidence = float(value)
            elif key == "sleep":
                time.sleep(float(value))
            elif value:
                scores[key] = float(value)
        return Finding(
            analyzer=self.name,
            version=self.version,
            stage="caption",
            scores=scores,
            confidence=confidence,
            covered=self.covered if self.covered is not None else list(item.categories),
            flags=flags,
            rationale={k: f"caption says {k}={v}" for k, v in scores.items()},
            model={"id": "caption-test", "version": self.version, "prompt_version": "none"},
        )
