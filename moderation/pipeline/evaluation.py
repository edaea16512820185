"""Measuring a policy's cascade on a platform's own labelled images (`moderation eval DIR`).

A folder of images with their labels, either `labels.csv` (`file,labels[,lang]`, labels joined
by `;` or `|`, empty or `none` for harmless) or one sub-folder per label (`hate/`, `none/`...),
goes through the policy's analyzer stages in this process, in cascade order and with the same
`run: when` routing as the workers (the bank and cache stages are left out: they recall earlier
verdicts, they do not judge), and the policy decides on the findings. Nothing is stored, no
audit row is written: this is the measurement a platform takes before switching a model on.

`summarise` turns the per-image results into the figures of the report: per category precision,
recall and F1 (flagged = the category's score at or above the policy's review mark), the
confusion of labels and actions, the share of harmful images allowed and of harmless ones held
(with 95 % Wilson intervals), calibration (ECE) per category, the cost per image per stage, and
the images that went wrong.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from moderation.analyzers.base import AnalysisInput, Analyzer, Finding
from moderation.errors import ModerationError
from moderation.pipeline.analyze import analysis_frame
from moderation.policy import Policy, Stage
from moderation.policy.cascade import next_stage
from moderation.policy.evaluate import evaluate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
HARMLESS = {"", "none", "harmless", "benign", "ok", "allow", "safe"}


@dataclass(frozen=True)
class Labelled:
    path: Path
    labels: frozenset[str]
    lang: str = ""


@dataclass
class Result:
    item: Labelled
    action: str
    scores: dict[str, float]
    top: str | None
    reasons: list[str]
    ms: dict[str, float] = field(default_factory=dict)  # per stage
    tokens: int = 0
    error: str | None = None
    rationale: str = ""


def _labels(raw: str, categories: Sequence[str], where: str) -> frozenset[str]:
    parts = {p.strip().lower() for p in raw.replace("|", ";").split(";")}
    labels = frozenset(p for p in parts if p not in HARMLESS)
    unknown = sorted(labels - set(categories))
    if unknown:
        raise ModerationError("INVALID_REQUEST", f"{where}: label(s) {unknown} are not categories of the policy")
    return labels


def read_labelled(folder: Path, categories: Sequence[str]) -> list[Labelled]:
    """The labelled images of `folder` (labels.csv, or one sub-folder per label)."""
    if not folder.is_dir():
        raise ModerationError("INVALID_REQUEST", f"{folder} is not a folder")
    index = folder / "labels.csv"
    root = folder.resolve()
    items: list[Labelled] = []
    if index.exists():
        try:
            with index.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM
                seen: set[Path] = set()
                for n, row in enumerate(csv.DictReader(fh), 2):
                    name = (row.get("file") or "").strip()
                    if not name:
                        raise ModerationError("INVALID_REQUEST", f"{index}:{n}: needs a `file` column and value")
                    path = (folder / name).resolve()
                    if root not in path.parents or not path.is_file():
                        raise ModerationError("INVALID_REQUEST", f"{index}:{n}: no image {name!r} in {folder}")
                    if path in seen:
                        raise ModerationError("INVALID_REQUEST", f"{index}:{n}: {name!r} is listed twice")
                    seen.add(path)
                    labels = _labels(row.get("labels") or "", categories, f"{index}:{n}")
                    items.append(Labelled(path, labels, (row.get("lang") or "").strip()))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ModerationError("INVALID_REQUEST", f"{index}: not a UTF-8 CSV file ({exc})") from exc
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            labels = _labels(sub.name, categories, str(sub))
            items += [
                Labelled(p.resolve(), labels)
                for p in sorted(sub.rglob("*"))
                # inside the folder only: a symlinked sub-folder or file pointing out is not read
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and root in p.resolve().parents
            ]
    if not items:
        raise ModerationError("INVALID_REQUEST", f"{folder}: no labelled images (labels.csv, or one folder per label)")
    return items


def run(
    items: Sequence[Labelled],
    policy: Policy,
    analyzer: Callable[[Stage], Analyzer],
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """Every item through the policy's analyzer stages and its decision (in order of `items`)."""

    def one(n_item: tuple[int, Labelled]) -> Result:
        n, item = n_item
        result = judge(item, policy, analyzer, f"eval{n:028d}")
        if progress:
            progress(n)
        return result

    if jobs <= 1:
        return [one(x) for x in enumerate(items)]
    with ThreadPoolExecutor(jobs) as pool:  # lets the VLM stage batch images
        return list(pool.map(one, enumerate(items)))


def judge(item: Labelled, policy: Policy, analyzer: Callable[[Stage], Analyzer], key: str) -> Result:
    found: list[Finding] = []
    ms: dict[str, float] = {}
    try:
        with Image.open(item.path) as im:
            im.seek(0)
            image = analysis_frame(im)
    except Exception as exc:  # an unreadable file is a result, not the end of the run
        return Result(item, "error", {}, None, ["unreadable"], error=f"{type(exc).__name__}: {exc}")
    inp = AnalysisInput(
        submission_id=key, tenant_id="eval", image=image, sha256="0" * 64, categories=tuple(policy.categories)
    )
    while (stage := next_stage(policy, found)) is not None:
        started = time.perf_counter()
        try:
            finding = analyzer(stage).analyze(inp)
        except Exception as exc:  # fail closed, as the workers do
            finding = Finding(stage.stage, "error", stage.stage, error=f"{type(exc).__name__}: {exc}")
        if not isinstance(finding, Finding):
            finding = Finding(stage.stage, "error", stage.stage, error=f"analyzer returned {type(finding).__name__}")
        elif finding.error is None and (problem := finding.problem()):  # NaN or out-of-range scores
            finding = Finding(finding.analyzer, finding.version, stage.stage, error=f"malformed finding: {problem}")
        finding.stage = stage.stage
        ms[stage.stage] = (time.perf_counter() - started) * 1000
        found.append(finding)
    decision = evaluate(policy, found)
    tokens = sum(int((f.model or {}).get("tokens_in", 0)) + int((f.model or {}).get("tokens_out", 0)) for f in found)
    top = decision.top_category
    why = next((str(f.rationale.get(top, "")) for f in found if top and f.rationale.get(top)), "")
    errors = [f.error for f in found if f.error]
    return Result(
        item,
        str(decision.action),
        dict(decision.categories),
        top,
        [str(r.get("code")) for r in decision.reasons],
        ms,
        tokens,
        "; ".join(e for e in errors if e) or None,
        why,
    )


# ------------------------------------------------------------------ figures


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of the proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(c - h, 3), round(c + h, 3))


def ece(pairs: Iterable[tuple[float, bool]], bins: int = 10) -> float:
    """Expected calibration error over equal-width bins."""
    buckets: dict[int, list[tuple[float, bool]]] = {}
    items = list(pairs)
    for p, y in items:
        buckets.setdefault(min(bins - 1, int(p * bins)), []).append((p, y))
    total = sum(len(b) * abs(sum(p for p, _ in b) / len(b) - sum(y for _, y in b) / len(b)) for b in buckets.values())
    return round(total / max(1, len(items)), 4)


def summarise(results: Sequence[Result], policy: Policy, wall_s: float) -> dict[str, Any]:
    cats = list(policy.categories)
    # Images whose analysis failed (unreadable, an analyzer error: review in production, fail
    # closed) are counted apart, not as caught harm or as harmless held: a broken model must not
    # look like a careful one.
    judged = [r for r in results if not r.error]
    harmful = [r for r in judged if r.item.labels]
    harmless = [r for r in judged if not r.item.labels]
    allowed_h = sum(r.action == "allow" for r in harmful)
    held_ok = sum(r.action != "allow" for r in harmless)
    per: dict[str, dict[str, Any]] = {}
    for c in cats:
        mark = policy.categories[c].review_at
        tp = sum(1 for r in judged if c in r.item.labels and r.scores.get(c, 0.0) >= mark)
        fp = sum(1 for r in judged if c not in r.item.labels and r.scores.get(c, 0.0) >= mark)
        pos = sum(1 for r in judged if c in r.item.labels)
        p = tp / (tp + fp) if tp + fp else None
        rec = tp / pos if pos else None
        f1 = 2 * p * rec / (p + rec) if p is not None and rec is not None and p + rec > 0 else None
        per[c] = {
            "n": pos,
            "flagged": tp + fp,
            "precision": _r(p),
            "recall": _r(rec),
            "recall_ci95": wilson(tp, pos) if pos else None,
            "f1": _r(f1),
            "review_at": mark,
            "ece": ece((r.scores.get(c, 0.0), c in r.item.labels) for r in judged),
        }
    actions = sorted({r.action for r in results})
    confusion: dict[str, dict[str, int]] = {}
    for r in results:
        row = ",".join(sorted(r.item.labels)) or "harmless"
        confusion.setdefault(row, dict.fromkeys(actions, 0))[r.action] += 1
    stages = sorted({s for r in results for s in r.ms})
    cost = {s: _r(sum(r.ms.get(s, 0.0) for r in results) / max(1, len(results)), 1) for s in stages}
    by_lang: dict[str, dict[str, Any]] = {}
    for lang in sorted({r.item.lang for r in results if r.item.lang}):
        h = [r for r in harmful if r.item.lang == lang]
        ok = [r for r in harmless if r.item.lang == lang]
        labelled = {c: [r for r in h if c in r.item.labels] for c in cats}
        by_lang[lang] = {
            "harmful_allowed": _rate(sum(r.action == "allow" for r in h), len(h)),
            "harmless_held": _rate(sum(r.action != "allow" for r in ok), len(ok)),
            # Recall at the review mark per category, in this language alone: a language's gap is
            # not hidden by another's strength.
            "recall": {
                c: _rate(sum(r.scores.get(c, 0.0) >= policy.categories[c].review_at for r in rs), len(rs))
                for c, rs in labelled.items()
                if rs
            },
        }
    wrong = [
        {
            "file": str(r.item.path.name),
            "labels": sorted(r.item.labels) or ["harmless"],
            "action": r.action,
            "top": r.top,
            "scores": {c: s for c, s in sorted(r.scores.items(), key=lambda kv: -kv[1])[:3]},
            "why": (r.error or r.rationale or ",".join(r.reasons))[:160],
        }
        for r in results
        if (r.item.labels and r.action == "allow") or (not r.item.labels and r.action != "allow") or r.error
    ]
    return {
        "policy": f"{policy.id}@{policy.version}",
        "images": len(results),
        "harmful": len(harmful),
        "harmless": len(harmless),
        "harmful_allowed": _rate(allowed_h, len(harmful)),
        "harmless_held": _rate(held_ok, len(harmless)),
        "languages": by_lang,
        "categories": per,
        "confusion": confusion,
        "ms_per_image": cost,
        "tokens_per_image": _r(sum(r.tokens for r in results) / max(1, len(results)), 1),
        "images_per_s": _r(len(results) / wall_s if wall_s > 0 else 0.0, 2),
        "errors": sum(1 for r in results if r.error),
        "wrong": wrong,
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": _r(k / n) if n else None, "ci95": wilson(k, n) if n else None}
