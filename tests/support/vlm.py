"""What the tiny test VLMs answer (see devtools.synthetic_vlm and the `tiny_vlm` fixture)."""

from __future__ import annotations

# The answer the scripted tiny VLM gives to every image: a threat, read from a meme.
SCRIPTED_ANSWER = {
    "categories": {
        c: {"score": 0.01, "rationale": ""} | (
            {"score": 0.97, "rationale": "threat to meet outside"} if c == "harassment" else {}
        )
        for c in (
            "sexual", "nudity", "child_safety", "violence_gore", "weapons", "drugs", "hate",
            "harassment", "self_harm", "extremism", "scam_fraud", "spam", "privacy",
        )
    },
    "confidence": 0.9,
    "ocr_text": "MEET ME OUTSIDE / YOU WILL REGRET IT",
    "meme": True,
    "irony": False,
    "prompt_injection": False,
}  # fmt: skip
