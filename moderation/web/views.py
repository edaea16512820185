"""Helpers the console's templates call: ages, score bars against the policy's marks, and OCR
text cut into plain and marked (addressed to a model) segments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from moderation.db.tables import as_utc


def age(iso_time: str | None, now: datetime) -> str:
    """'3 h 12 min' since `iso_time`."""
    if not iso_time:
        return "-"
    seconds = max(0, int((now - as_utc(datetime.fromisoformat(iso_time))).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def short_time(iso_time: str | None) -> str:
    """'2026-12-02 14:05 UTC' from an ISO time."""
    if not iso_time:
        return "-"
    return as_utc(datetime.fromisoformat(iso_time)).strftime("%Y-%m-%d %H:%M UTC")


def score_bars(marks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One bar per category: its score and the policy's marks, as percentages, with the band it falls in."""
    bars = []
    for category, m in marks.items():
        score = float(m.get("score") or 0.0)
        band = "low"
        if m.get("block_at") is not None and score >= m["block_at"]:
            band = "block"
        elif m.get("restrict_at") is not None and score >= m["restrict_at"]:
            band = "restrict"
        elif m.get("review_at") is not None and score >= m["review_at"]:
            band = "review"
        bars.append(
            {
                "category": category,
                "score": score,
                "pct": round(score * 100, 1),
                "band": band,
                "marks": [
                    (name, round(float(m[key]) * 100, 1))
                    for name, key in (("review", "review_at"), ("restrict", "restrict_at"), ("block", "block_at"))
                    if m.get(key) is not None
                ],
                "clause": m.get("clause"),
            }
        )
    return bars


def marked_segments(text: str | None, spans: list[list[int]]) -> list[tuple[str, bool]]:
    """`text` as (segment, marked) pairs, the marked ones being the spans (merged when they overlap)."""
    if not text:
        return []
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[tuple[str, bool]] = []
    at = 0
    for start, end in merged:
        if start > at:
            out.append((text[at:start], False))
        out.append((text[start:end], True))
        at = end
    if at < len(text):
        out.append((text[at:], False))
    return out
