"""Evaluate an analyzer cascade on a labelled image set.

    python bench/synth.py var/synth && python bench/eval.py var/synth [--policy default]

Runs the policy's analyzer stages in-process (the same classes and options the workers load),
applies `evaluate`, and prints per-category precision/recall/F1 (a category counts as predicted
when its score reaches the policy's review_at), the share decided automatically, and the
confusion of expected outcome against the decision (allow / block / review).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a folder with images and labels.jsonl")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--policies-dir", type=Path, default=REPO / "policies")
    args = ap.parse_args()

    from moderation.analyzers.base import AnalysisInput, load_analyzer
    from moderation.intake.images import to_rgb
    from moderation.policy import evaluate, load_policies, qa_draw

    policy = load_policies(args.policies_dir)[args.policy]
    analyzers = [(s, load_analyzer(s.analyzer, s.options)) for s in policy.analyzer_stages if s.analyzer]
    rows = [json.loads(line) for line in (args.dataset / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    confusion: Counter[tuple[str, str]] = Counter()
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    wrong: list[str] = []
    started = time.perf_counter()
    for row in rows:
        image = to_rgb(Image.open(args.dataset / row["file"]))
        item = AnalysisInput(
            row["file"], "eval", image, "0" * 64, caption=row.get("caption"), categories=tuple(policy.categories)
        )
        found = []
        for stage, analyzer in analyzers:
            f = analyzer.analyze(item)
            f.stage = stage.stage
            found.append(f)
        decision = evaluate(policy, found, qa_draw(row["file"]) if policy.qa_sample_rate else 1.0)
        action = {"escalate": "review", "restrict": "block"}.get(decision.action, decision.action)
        confusion[(row["expected"], action)] += 1
        by_kind.setdefault(row["kind"], Counter())[action] += 1
        predicted = {c for c, s in decision.categories.items() if s >= policy.categories[c].review_at}
        for c in policy.categories:
            truth = c in row["categories"]
            tp[c] += truth and c in predicted
            fp[c] += (not truth) and c in predicted
            fn[c] += truth and c not in predicted
        ok = action == row["expected"] or (row["expected"] == "not_allow" and action != "allow")
        if not ok:
            wrong.append(
                f"  {row['file']}: expected {row['expected']}, got {decision.action} "
                f"({', '.join(r['code'] for r in decision.reasons)}); text {row['text']!r}"
            )
    elapsed = time.perf_counter() - started

    print(
        f"{len(rows)} images, policy {policy.id} ({policy.version}), stages "
        f"{[s.stage for s in policy.cascade]}, {elapsed / len(rows) * 1000:.0f} ms/image"
    )
    print("\nper category (predicted = score >= review_at):")
    print(f"  {'category':14} {'P':>5} {'R':>5} {'F1':>5}  tp fp fn")
    for c in policy.categories:
        if tp[c] + fp[c] + fn[c] == 0:
            continue
        p = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        r = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        print(f"  {c:14} {p:5.2f} {r:5.2f} {f1:5.2f}  {tp[c]:2d} {fp[c]:2d} {fn[c]:2d}")
    auto = sum(n for (_, a), n in confusion.items() if a != "review")
    print(f"\ndecided automatically: {auto}/{len(rows)} ({100 * auto / len(rows):.0f} %); the rest go to review")
    print("\nconfusion (rows: expected; columns: decision):")
    print(f"  {'':10} {'allow':>6} {'block':>6} {'review':>6}")
    for expected in ("allow", "block", "not_allow"):
        counts = [confusion[(expected, a)] for a in ("allow", "block", "review")]
        if sum(counts):
            print(f"  {expected:10} " + " ".join(f"{n:6d}" for n in counts))
    print("\nby kind:")
    for kind, counts in by_kind.items():
        print(f"  {kind:10} " + ", ".join(f"{a} {n}" for a, n in sorted(counts.items())))
    unsafe = confusion[("not_allow", "allow")] + confusion[("block", "allow")]
    print(
        f"\nharmful allowed: {unsafe}; harmless not allowed: "
        f"{confusion[('allow', 'block')] + confusion[('allow', 'review')]}"
    )
    if wrong:
        print("\nmisses:")
        print("\n".join(wrong))


if __name__ == "__main__":
    main()
