"""The vision-language-model stage: risk prompts as data, output parsing, engines, micro-batching.

`prompts` and `batching` are import-light; `engines` imports torch/transformers (or httpx) only
inside the engines' constructors, so the API process never pays for them.
"""
