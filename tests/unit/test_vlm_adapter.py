"""A platform's own fine-tune: a PEFT (LoRA) adapter over the tiny GLM-4.6V checkpoint, loaded by
the in-process engine (MODERATION_VLM_ADAPTER), named by the openai engine, and part of the model's
identity and of the verdict-cache key."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from moderation.analyzers.vlm.analyzer import VlmAnalyzer
from moderation.analyzers.vlm.engines import Generation, Request, adapter_digest
from moderation.analyzers.vlm.prompts import load_prompt, render
from moderation.settings import Settings, data_dir

POLICIES = data_dir("policies")


@pytest.fixture(scope="module")
def adapter(tiny_vlm: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devtools.synthetic_vlm import save_tiny_adapter

    return save_tiny_adapter(tiny_vlm["random"], tmp_path_factory.mktemp("adapter") / "platform-lora")


def _answers(engine: object) -> list[str]:
    spec = load_prompt(POLICIES, "risk-v1")
    reqs = [
        Request(f"k{i}", Image.new("RGB", (64 + 16 * i, 64), (40 * i, 90, 160)), render(spec, ["hate"], f"cap {i}"))
        for i in range(3)
    ]
    outs = engine.generate(reqs, 8)  # type: ignore[attr-defined]
    assert all(isinstance(o, Generation) for o in outs), outs
    return [o.text for o in outs if isinstance(o, Generation)]


def test_adapter_changes_answers_and_identity(tiny_vlm: dict[str, Path], adapter: Path) -> None:
    from moderation.analyzers.vlm.transformers_engine import TransformersEngine

    base = TransformersEngine(str(tiny_vlm["random"]), device="cpu", image_side=112)
    tuned = TransformersEngine(str(tiny_vlm["random"]), device="cpu", image_side=112, adapter=str(adapter))
    again = TransformersEngine(str(tiny_vlm["random"]), device="cpu", image_side=112)
    assert type(tuned.model).__name__ == type(base.model).__name__  # merged: the base class, no wrapper
    base_answers, tuned_answers = _answers(base), _answers(tuned)
    assert base_answers == _answers(again)  # greedy: the base model answers the same twice
    assert tuned_answers != base_answers  # the fine-tune answers differently
    assert tuned.model_id.endswith("+platform-lora")
    assert tuned.model_version == f"{base.model_version}+{adapter_digest(str(adapter))}"


def test_adapter_is_part_of_the_cache_key(tiny_vlm: dict[str, Path], adapter: Path, tmp_path: Path) -> None:
    plain = Settings(vlm_model=str(tiny_vlm["random"]))
    tuned = Settings(vlm_model=str(tiny_vlm["random"]), vlm_adapter=str(adapter))
    key_plain = VlmAnalyzer.identity({}, plain)
    key_tuned = VlmAnalyzer.identity({}, tuned)
    assert key_plain != key_tuned and adapter_digest(str(adapter)) in key_tuned
    # The same adapter retrained in place is a new model: a new key.
    retrained = tmp_path / "platform-lora"
    retrained.mkdir()
    for f in adapter.iterdir():
        data = f.read_bytes()
        (retrained / f.name).write_bytes(data + b" " if f.suffix == ".json" else data)
    assert (
        VlmAnalyzer.identity({}, Settings(vlm_model=str(tiny_vlm["random"]), vlm_adapter=str(retrained))) != key_tuned
    )
    # A stage's own option names an adapter too.
    assert VlmAnalyzer.identity({"adapter": str(adapter)}, plain) == key_tuned


def test_openai_engine_asks_the_server_for_the_adapter_by_name() -> None:
    s = Settings(vlm_engine="openai", vlm_base_url="http://127.0.0.1:9/v1", vlm_adapter="platform-lora")
    analyzer = VlmAnalyzer(settings=s)
    assert analyzer.engine.model_id == "platform-lora"  # vLLM serves a LoRA module under its own name
    assert "platform-lora" in VlmAnalyzer.identity({}, s)
    assert VlmAnalyzer.identity({}, s) != VlmAnalyzer.identity({}, Settings(vlm_engine="openai"))


def test_a_folder_that_is_not_an_adapter_is_refused(tiny_vlm: dict[str, Path], tmp_path: Path) -> None:
    from moderation.analyzers.vlm.transformers_engine import TransformersEngine

    with pytest.raises(RuntimeError, match="not a PEFT adapter"):
        TransformersEngine(str(tiny_vlm["random"]), device="cpu", image_side=112, adapter=str(tmp_path))


def test_eval_compares_base_and_adapter_on_the_same_images(
    tiny_vlm: dict[str, Path], adapter: Path, tmp_path: Path
) -> None:
    """`moderation eval --engine transformers --adapter A --compare`: both models on the same
    labelled images, one report with both runs (the tiny random model answers garbage, which
    fails closed to review: never allowed)."""
    import json
    import os
    import subprocess
    import sys

    from tests.support.paths import REPO

    for label, colour in (("none", "white"), ("hate", "gray")):
        (tmp_path / "set" / label).mkdir(parents=True)
        Image.new("RGB", (96, 64), colour).save(tmp_path / "set" / label / "a.png")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MODERATION_VLM_DEVICE": "cpu",
        "MODERATION_VLM_IMAGE_SIDE": "112",
        "MODERATION_VLM_MAX_NEW_TOKENS": "8",
    }
    r = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "eval", str(tmp_path / "set"), "--engine", "transformers",
         "--model", str(tiny_vlm["random"]), "--adapter", str(adapter), "--compare",
         "--report", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads((tmp_path / "r.json").read_text())
    assert list(runs) == ["base", "adapter platform-lora"]
    for figures in runs.values():
        assert figures["images"] == 2 and "vlm" in figures["ms_per_image"]
        assert figures["harmful_allowed"]["k"] == 0  # garbage output fails closed
    report = (tmp_path / "r.md").read_text()
    assert "| base |" in report and "| adapter platform-lora |" in report
