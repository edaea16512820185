"""The vision-language-model stage: the analyzer (`analyzer`), risk prompts as data and output
parsing (`prompts`), engines (`engines`), micro-batching (`batching`), log-probability scores
(`logprob`). Policies name it `moderation.analyzers.vlm:VlmAnalyzer`.

`prompts` and `batching` are import-light; the engines import torch/transformers (or httpx) only
inside their constructors, so the API process never pays for them.
"""

from moderation.analyzers.vlm.analyzer import VlmAnalyzer

__all__ = ["VlmAnalyzer"]
