"""The report of `moderation eval`: Markdown, or HTML (one self-contained page, no scripts).

One or more runs (e.g. the base model and an adapter) on the same images: a comparison table
first, then each run's categories, confusion of actions, cost and the images that went wrong.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}"
    if isinstance(x, tuple | list) and len(x) == 2 and all(isinstance(v, float) for v in x):
        return f"[{x[0]:.2f}, {x[1]:.2f}]"
    return str(x)


def _rate(r: dict[str, Any]) -> str:
    if r.get("rate") is None:
        return "-"
    return f"{r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {_fmt(tuple(r['ci95']))})"


def _recall(r: dict[str, Any] | None) -> str:
    return "-" if not r or r.get("rate") is None else f"{r['rate']:.2f} ({r['k']}/{r['n']})"


def tables(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    out.append(
        (
            "Summary",
            ["run", "images", "harmful allowed", "harmless held", "errors", "ms/image", "tokens/image", "images/s"],
            [
                [
                    name,
                    str(s["images"]),
                    _rate(s["harmful_allowed"]),
                    _rate(s["harmless_held"]),
                    str(s["errors"]),
                    ", ".join(f"{k} {v:.0f}" for k, v in s["ms_per_image"].items()) or "-",
                    _fmt(s["tokens_per_image"]),
                    _fmt(s["images_per_s"]),
                ]
                for name, s in runs
            ],
        )
    )
    for name, s in runs:
        if s["languages"]:
            out.append(
                (
                    f"{name}: by language",
                    ["language", "harmful allowed", "harmless held"],
                    [
                        [lang, _rate(v["harmful_allowed"]), _rate(v["harmless_held"])]
                        for lang, v in s["languages"].items()
                    ],
                )
            )
            langs = list(s["languages"])
            out.append(
                (
                    f"{name}: recall at the review mark, by language",
                    ["category", *langs],
                    [
                        [c, *(_recall(s["languages"][lang].get("recall", {}).get(c)) for lang in langs)]
                        for c in s["categories"]
                        if any(s["languages"][lang].get("recall", {}).get(c) for lang in langs)
                    ],
                )
            )
        out.append(
            (
                f"{name}: per category (flagged = score ≥ the policy's review mark)",
                ["category", "labelled", "flagged", "precision", "recall", "recall 95% CI", "F1", "review at", "ECE"],
                [
                    [
                        c,
                        str(v["n"]),
                        str(v["flagged"]),
                        _fmt(v["precision"]),
                        _fmt(v["recall"]),
                        _fmt(tuple(v["recall_ci95"])) if v["recall_ci95"] else "-",
                        _fmt(v["f1"]),
                        _fmt(v["review_at"]),
                        _fmt(v["ece"]),
                    ]
                    for c, v in s["categories"].items()
                ],
            )
        )
        actions = sorted({a for row in s["confusion"].values() for a in row})
        out.append(
            (
                f"{name}: labels x actions",
                ["labels", *actions],
                [[row, *(str(v.get(a, 0)) for a in actions)] for row, v in sorted(s["confusion"].items())],
            )
        )
        out.append(
            (
                f"{name}: what went wrong ({len(s['wrong'])} images)",
                ["file", "labels", "action", "top scores", "why"],
                [
                    [
                        w["file"],
                        ", ".join(w["labels"]),
                        w["action"],
                        ", ".join(f"{c} {v:.2f}" for c, v in w["scores"].items()),
                        w["why"],
                    ]
                    for w in s["wrong"]
                ],
            )
        )
    return out


def markdown(title: str, runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    lines = [f"# {title}", ""]
    for heading, header, rows in tables(runs):
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def _md(cell: str) -> str:
    """A table cell: HTML escaped (Markdown renderers pass raw HTML through), pipes and line
    breaks neutralised."""
    return html.escape(cell, quote=False).replace("|", "\\|").replace("\n", " ")


def html_page(title: str, runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{e(title)}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:1.5rem;max-width:1300px}"
        "table{border-collapse:collapse;margin-bottom:1.5rem}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}</style>",
        f"<h1>{e(title)}</h1>",
    ]
    for heading, header, rows in tables(runs):
        parts.append(f"<h2>{e(heading)}</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in header)}</tr>")
        parts += [f"<tr>{''.join(f'<td>{e(c)}</td>' for c in row)}</tr>" for row in rows]
        parts.append("</table>")
    return "\n".join(parts) + "\n</html>\n"
