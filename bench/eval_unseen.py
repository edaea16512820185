"""The lite analyzer on text it was never tuned on (issue 13's "before" figure).

    .venv/bin/python bench/eval_unseen.py [--json FILE] [--data FILE]

Each text of tests/data/eval_unseen/texts.jsonl (written without seeing the lexicon or rules) is
given to the lite analyzer as the caption of a blank image (so OCR reads nothing and the text
path alone is measured), and the default policy decides. Prints, per language: per category the
recall at the policy's review mark (score of the labelled category >= review_at) and the share
allowed; the harmful-allowed rate and the harmless-held rate with 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moderation.analyzers.base import AnalysisInput  # noqa: E402
from moderation.analyzers.lite import LiteAnalyzer  # noqa: E402
from moderation.pipeline.evaluation import wilson  # noqa: E402
from moderation.policy import evaluate, load_policies  # noqa: E402

DATA = REPO / "tests" / "data" / "eval_unseen" / "texts.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--data", type=Path, default=DATA, help="a set in the same format (default: %(default)s)")
    args = ap.parse_args()
    policy = load_policies(REPO / "policies")["default"]
    lite = LiteAnalyzer()
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    items = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for i, item in enumerate(items):
        finding = lite.analyze(
            AnalysisInput(
                submission_id=f"{i:032x}",
                tenant_id="eval",
                image=blank,
                sha256="0" * 64,
                caption=item["text"],
                categories=tuple(policy.categories),
            )
        )
        action = evaluate(policy, [finding]).action
        cat, lang = item["category"], item["lang"]
        stats = out[lang][cat]
        stats["n"] += 1
        stats["allowed"] += action == "allow"
        if cat != "none":
            stats["recalled"] += finding.scores.get(cat, 0.0) >= policy.categories[cat].review_at
    report: dict[str, object] = {}
    for lang, cats in sorted(out.items()):
        harmful = [s for c, s in cats.items() if c != "none"]
        n_h = sum(s["n"] for s in harmful)
        allowed_h = sum(s["allowed"] for s in harmful)
        none = cats.get("none", {"n": 0, "allowed": 0})
        held = none["n"] - none["allowed"]
        rows = {
            c: {
                "n": s["n"],
                "recall_at_review": round(s["recalled"] / s["n"], 3),
                "allowed": round(s["allowed"] / s["n"], 3),
            }
            for c, s in sorted(cats.items())
            if c != "none"
        }
        report[lang] = {
            "harmful_allowed": {"rate": round(allowed_h / n_h, 3), "ci95": wilson(allowed_h, n_h), "n": n_h},
            "harmless_held": {
                "rate": round(held / none["n"], 3) if none["n"] else None,
                "ci95": wilson(held, none["n"]),
                "n": none["n"],
            },
            "categories": rows,
        }
        print(
            f"== {lang}: harmful allowed {allowed_h}/{n_h} {wilson(allowed_h, n_h)}, "
            f"harmless held {held}/{none['n']} {wilson(held, none['n'])}"
        )
        for c, r in rows.items():
            print(f"   {c:14s} n={r['n']:3d} recall@review={r['recall_at_review']:.2f} allowed={r['allowed']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
