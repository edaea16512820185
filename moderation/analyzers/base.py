"""The analyzer port: what every analyzer (hash banks, lite CPU models, the VLM) produces.

This module must stay import-light (no torch, no model stacks): the API imports it.
Adapters that need heavy libraries import them inside their constructors.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

# The port's two faults (defined with the one error type); importable from here for analyzer authors.
from moderation.errors import FatalAnalyzerError, TransientAnalyzerError

__all__ = [
    "AnalysisInput",
    "Analyzer",
    "FatalAnalyzerError",
    "Finding",
    "TransientAnalyzerError",
    "analyzer_class",
    "load_analyzer",
]


@dataclass
class Finding:
    """What one analyzer says about one image.

    `scores` holds a probability-like score in [0, 1] per policy category. `covered` lists the
    categories the analyzer can actually see (None: exactly those in `scores`); the policy uses
    it to route uncovered categories. `error` set means the analyzer failed: the policy fails
    closed on it, never to allow.
    """

    analyzer: str
    version: str
    stage: str
    scores: dict[str, float] = field(default_factory=dict)
    confidence: float = 1.0
    covered: list[str] | None = None
    rationale: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    ocr_text: str | None = None
    error: str | None = None
    model: dict[str, str] | None = None  # id, version, prompt_version
    bank_match: dict[str, Any] | None = None  # bank, kind, label, category, distance, entry_id, hash
    cached: bool = False
    score_methods: dict[str, str] = field(default_factory=dict)  # per category: how its score was made

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def problem(self) -> str | None:
        """Why this finding cannot be trusted as data (None: it can). Anything an analyzer returns
        passes here before the policy sees it, so a NaN or a string never turns into `allow`."""
        import math

        if not isinstance(self.scores, dict) or not all(
            isinstance(k, str)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and 0.0 <= v <= 1.0
            for k, v in self.scores.items()
        ):
            return f"scores must map categories to numbers in [0, 1], got {self.scores!r:.200}"
        c = self.confidence
        if not (isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) and 0.0 <= c <= 1.0):
            return f"confidence must be a number in [0, 1], got {c!r:.50}"
        if not isinstance(self.flags, dict) or not all(isinstance(v, bool) for v in self.flags.values()):
            return "flags must map names to booleans"
        if self.covered is not None and not (
            isinstance(self.covered, list) and all(isinstance(x, str) for x in self.covered)
        ):
            return "covered must be a list of category names"
        return None

    @property
    def coverage(self) -> set[str]:
        return set(self.covered) if self.covered is not None else set(self.scores)


@dataclass(frozen=True)
class AnalysisInput:
    submission_id: str
    tenant_id: str
    image: Image.Image  # RGB, normalised
    sha256: str
    caption: str | None = None
    phash: str | None = None
    pdq: str | None = None
    frames: int = 1
    categories: tuple[str, ...] = ()  # the policy's categories in scope
    frames_sample: tuple[Image.Image, ...] = ()  # a few more frames of an animation (RGB)
    isolate: bool = False  # a redelivery or retry: a batching analyzer runs it on its own


class Analyzer(ABC):
    """One stage of a policy's cascade. Implementations must be safe to call repeatedly."""

    name: str = "analyzer"
    version: str = "0"

    @classmethod
    def identity(cls, options: dict[str, Any], settings: Any) -> str:
        """What identifies this analyzer's results without loading it (the verdict cache key):
        the class version by default; analyzers whose model comes from settings add it."""
        return cls.version

    @classmethod
    def check_policy(cls, options: dict[str, Any], categories: tuple[str, ...], policies_dir: Path) -> None:
        """Check, when policies load, that this analyzer can serve a stage with `options` for a
        policy of `categories` (files in `policies_dir` it names exist and cover them).
        Raises ValueError or OSError naming the problem; nothing to check by default."""
        return None

    def warmup(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Load models and run them once, before the worker takes its first task."""

    @abstractmethod
    def analyze(self, item: AnalysisInput) -> Finding:
        """Analyze one image. Raise TransientAnalyzerError for faults worth retrying."""

    def analyze_batch(self, items: list[AnalysisInput]) -> list[Finding]:
        """Analyze several images; one bad item must not fail the others."""
        out: list[Finding] = []
        for item in items:
            try:
                out.append(self.analyze(item))
            except TransientAnalyzerError:
                raise
            except Exception as exc:  # one item's failure becomes that item's error finding
                out.append(Finding(self.name, self.version, stage="", error=f"{type(exc).__name__}: {exc}"))
        return out


def analyzer_class(path: str) -> type[Analyzer]:
    """The class behind a dotted path `package.module:ClassName` (imported, not instantiated)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"analyzer path {path!r} must look like 'package.module:ClassName'")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Analyzer)):
        raise TypeError(f"{path} is not an Analyzer")
    return cls


def load_analyzer(path: str, options: dict[str, Any] | None = None) -> Analyzer:
    """Build an analyzer from a dotted path `package.module:ClassName`."""
    analyzer = analyzer_class(path)(**(options or {}))
    if not isinstance(analyzer, Analyzer):
        raise TypeError(f"{path} is not an Analyzer")
    return analyzer
