"""Charts drawn on the server as SVG geometry (the templates emit the <rect>s): readable without
JavaScript, no chart library, nothing loaded from elsewhere."""

from __future__ import annotations

from typing import Any

ACTION_ORDER = ("allow", "restrict", "review", "block", "escalate")
WIDTH, HEIGHT = 640, 160


def stacked_days(per_day: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One column per day, stacked by action: {width, height, bars: [{x, w, segments: [{y, h, action, n}]}]}."""
    days = sorted(per_day)
    top = max((sum(v.values()) for v in per_day.values()), default=0) or 1
    step = WIDTH / max(len(days), 1)
    columns = []
    for i, day in enumerate(days):
        y = float(HEIGHT)
        segments = []
        for action in ACTION_ORDER:
            n = per_day[day].get(action, 0)
            if not n:
                continue
            h = HEIGHT * n / top
            y -= h
            segments.append({"y": round(y, 1), "h": round(h, 1), "action": action, "n": n})
        columns.append({"day": day, "x": round(i * step, 1), "w": round(max(step - 2, 1), 1), "segments": segments})
    return {"width": WIDTH, "height": HEIGHT, "columns": columns, "top": top}


def bars(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Horizontal bars: [{label, n, pct}] scaled to the largest."""
    top = max(counts.values(), default=0) or 1
    return [{"label": k, "n": n, "pct": round(100 * n / top, 1)} for k, n in counts.items()]
