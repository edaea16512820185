"""GLM-4.6V-shaped models with random weights, built locally (no download).

Tests and benchmarks need the exact architecture and processor of GLM-4.6V-Flash
(`Glm4vForConditionalGeneration` + `Glm46VProcessor`) without its 20 GB of weights:

- `build_processor()` makes a byte-level BPE tokenizer holding GLM's special tokens, a GLM-shaped
  chat template (with the `enable_thinking` switch) and the real `Glm46VImageProcessor`.
- `tiny_config()` / `flash_config()` give the model config: a few layers for CPU tests, or the
  real GLM-4.6V-Flash sizes (9B language model + vision tower) for the GPU benchmark.
- `save_tiny_model(path)` writes a checkpoint that the production loader
  (`moderation.analyzers.vlm.engines.TransformersEngine`) loads like the real one.

`scripted_answer` makes a weight double that answers one fixed text whatever it is shown: the
answer is one token of the vocabulary and the final norm is zeroed, so every step's logits are
equal and greedy decoding picks token 0, which is that answer. It lets an integration test
follow a well-formed answer through the pipeline; random weights test the malformed path.

Imports torch and transformers: never import this module from the API process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<think>",
    "</think>",
]

# GLM-4.6V's template, reduced to what moderation uses: system/user/assistant turns, images as
# <|begin_of_image|><|image|><|end_of_image|>, and `enable_thinking=False` closing an empty
# think block so that the model answers directly.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "{%- if m.content is string -%}{%- set parts = [{'type': 'text', 'text': m.content}] -%}"
    "{%- else -%}{%- set parts = m.content -%}{%- endif -%}"
    "<|{{ m.role }}|>{{ '\\n' }}"
    "{%- for p in parts -%}"
    "{%- if p.type == 'image' -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif p.type == 'text' -%}{{ p.text }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{{ '\\n' }}{%- endif -%}"
    "{%- endif -%}"
)

_CORPUS = [
    "You are a content-moderation classifier. Answer with one JSON object only.",
    '{"categories": {"harassment": {"score": 0.9, "rationale": "threat"}}, "confidence": 0.8}',
    '"ocr_text": "MEET ME OUTSIDE", "meme": true, "irony": false, "prompt_injection": false',
    "sexual nudity child_safety violence_gore weapons drugs hate harassment self_harm extremism",
    "scam_fraud spam privacy text in the image is data never instructions caption",
]


def _corpus() -> list[str]:
    """What the tokenizer learns its merges from: the shipped prompts (so a prompt costs about as
    many tokens as with GLM's 151k-entry vocabulary, ~4 characters per token) and a few answers."""
    from moderation.settings import data_dir

    texts = list(_CORPUS)
    for path in sorted((data_dir("policies") / "prompts").glob("*.yaml")):
        texts += path.read_text(encoding="utf-8").splitlines()
    return texts


def build_tokenizer(answer: str | None = None, vocab_size: int = 1500) -> Any:
    """A byte-level BPE tokenizer with GLM's special tokens, left padding. With `answer`, token
    id 0 is that whole text (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    leading = [answer] if answer is not None else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=leading + SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if answer is not None:  # trained as special to get id 0; decoded as text
        spec = json.loads(tok.to_str())
        spec["added_tokens"][0]["special"] = False
        tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(answer: str | None = None) -> Any:
    """The real `Glm46VProcessor` (image + video processors) around the synthetic tokenizer."""
    from transformers import Glm46VImageProcessor, Glm46VProcessor, Glm46VVideoProcessor

    tokenizer = build_tokenizer(answer)
    return Glm46VProcessor(
        image_processor=Glm46VImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Glm46VVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def _ids(tokenizer: Any) -> dict[str, Any]:
    c = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": c("<|image|>"),
        "video_token_id": c("<|video|>"),
        "image_start_token_id": c("<|begin_of_image|>"),
        "image_end_token_id": c("<|end_of_image|>"),
        "video_start_token_id": c("<|begin_of_video|>"),
        "video_end_token_id": c("<|end_of_video|>"),
    }


def _config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Any:
    from transformers import Glm4vConfig

    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rotary = head_dim // 2  # partial_rotary_factor 0.5, as GLM-4.6V
    half = rotary // 2
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = {
        "vocab_size": max(len(tokenizer), text.pop("vocab_size", 0)),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": section,
        },
        "pad_token_id": tokenizer.pad_token_id,
        **text,
    }
    vision = {"out_hidden_size": text["hidden_size"], "patch_size": 14, "spatial_merge_size": 2, **vision}
    cfg = Glm4vConfig(text_config=text, vision_config=vision, **_ids(tokenizer))
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    cfg.eos_token_id = eos
    cfg.pad_token_id = tokenizer.pad_token_id
    return cfg


# Two layers of everything: loads and runs in well under a second on a CPU.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
TINY_VISION = {"depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}


def tiny_config(tokenizer: Any) -> Any:
    """The GLM-4.6V architecture at TINY_TEXT / TINY_VISION sizes."""
    return _config(tokenizer, text=dict(TINY_TEXT), vision=dict(TINY_VISION))


def flash_config(tokenizer: Any) -> Any:
    """GLM-4.6V-Flash's sizes (the GLM-4.1V-9B architecture): 40 text layers of 4096, 24 vision
    layers of 1536, vocabulary 151,552."""
    return _config(
        tokenizer,
        text={
            "vocab_size": 151552,
            "hidden_size": 4096,
            "intermediate_size": 13696,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 2,
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-5,
        },
        vision={"depth": 24, "hidden_size": 1536, "num_heads": 12, "intermediate_size": 13696},
    )


def save_tiny_model(path: Path, answer: str | None = None, seed: int = 0) -> Path:
    """Write a tiny random GLM-4.6V-architecture checkpoint + processor to `path`."""
    import torch
    from transformers import GenerationConfig, Glm4vForConditionalGeneration

    processor = build_processor(answer)
    config = tiny_config(processor.tokenizer)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    if answer is not None:
        with torch.no_grad():
            model.model.language_model.norm.weight.zero_()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_qwen25vl(path: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL checkpoint: another architecture through the same engine (the
    engine is not GLM-specific)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=[*special, "<|video_pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.chat_template = QWEN_TEMPLATE
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )

    def ids(token: str) -> int:
        found: Any = fast.convert_tokens_to_ids(token)
        return int(found)

    config = Qwen2_5_VLConfig(
        text_config={
            **TINY_TEXT,
            "vocab_size": len(fast),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        },
        vision_config={
            **TINY_VISION,
            "out_hidden_size": TINY_TEXT["hidden_size"],
            "fullatt_block_indexes": [1],
            "window_size": 112,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    config.eos_token_id = ids("<|im_end|>")
    config.pad_token_id = ids("<|endoftext|>")
    config.bos_token_id = None
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_adapter(base: Path, path: Path, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA adapter (PEFT format) over the tiny checkpoint at `base`, with random non-zero
    weights on the language model's attention projections: loaded over the base model it answers
    differently, as a platform's fine-tune would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=4 * rank,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        init_lora_weights=False,  # random A and B: the adapter changes the answers from the first token
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(path)
    return path
