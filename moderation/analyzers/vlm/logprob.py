"""Scores from token probabilities: what the model believed, not only the number it wrote.

A generated score such as `0.97` is one sample of the model's belief. Where the engine exposes
the top alternatives (and their log-probabilities) at each generated token, the score can be
read as an expectation instead: P(the integer part is "1") plus, otherwise, the expected value
of the decimal digits over the alternatives the model weighed at that position. Like
ShieldGemma's P("Yes"), this is smooth and ranks items by the model's certainty; unlike a
separate yes/no pass per category it costs nothing beyond the answer already generated, and the
rationale comes from the same answer.

A score whose digits the tokenizer fused with other characters (a token "0.9") cannot be read
this way: it keeps the generated value, and the finding records which method gave each score.
The analyzer uses the expectation only to raise a score (max of the two): uncertainty sends an
item towards a human, never towards allow, and text the model echoed (JSON read in the image, a
thinking block) can never lower what it wrote in its answer.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right

TokenStep = tuple[str, dict[str, float]]  # a generated token's text, its top alternatives {text: logprob}

_SCORE = re.compile(r'"(?P<cat>[a-z_]+)"\s*:\s*\{\s*"score"\s*:\s*(?P<num>[01](?:\.\d+)?)')


def _dist(top: dict[str, float], keep: dict[str, float]) -> float | None:
    """Expected value over the alternatives that `keep` maps to a value (None: none of them)."""
    weights = {t: math.exp(lp) for t, lp in top.items() if t in keep}
    total = sum(weights.values())
    if total <= 0:
        return None
    return sum(w * keep[t] for t, w in weights.items()) / total


def expected_scores(steps: list[TokenStep], categories: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Per category, the expected score under the model's token distribution, for the categories
    whose score tokens can be read (the first occurrence of each in the answer)."""
    starts: list[int] = []
    text = ""
    for token, _ in steps:
        starts.append(len(text))
        text += token
    wanted = set(categories)
    out: dict[str, float] = {}
    for m in _SCORE.finditer(text):
        cat = m.group("cat")
        if cat not in wanted or cat in out:
            continue
        at = m.start("num")
        i = bisect_right(starts, at) - 1
        token, top = steps[i]
        if starts[i] != at or token.strip() not in ("0", "1", "0.", "1."):
            continue  # the number shares its token with other text: keep the generated value
        integer = {t: 1.0 if t.strip().startswith("1") else 0.0 for t in top if t.strip() in ("0", "1", "0.", "1.")}
        p_one = _dist(top, integer)
        if p_one is None:
            continue
        fraction = 0.0
        if token.strip().startswith("1"):
            # The model wrote 1.x: what it would have written after a "0" is unknown; count that
            # branch as the top of the range rather than as 0.
            out[cat] = min(1.0, p_one + (1.0 - p_one) * 0.95)
            continue
        if "." in m.group("num"):
            frac_at = at + 2
            j = bisect_right(starts, frac_at) - 1
            if starts[j] != frac_at:
                continue
            # Each alternative stands for the middle of its interval ("9" -> 0.95); the token the
            # model chose keeps the digits it went on to write ("9" then "7" -> 0.97).
            chosen = steps[j][0]
            if not chosen.isdigit():
                continue  # digits fused with what follows ("97,"): keep the generated value
            digits = {t: (int(t) + 0.5) / 10 ** len(t) for t in steps[j][1] if t.isdigit()}
            digits[chosen] = float("0." + m.group("num")[2:])
            expected = _dist(steps[j][1], digits)
            if expected is None:
                continue
            fraction = expected
        out[cat] = min(1.0, max(0.0, p_one + (1.0 - p_one) * fraction))
    return out
