"""`moderation eval`'s reading of labelled folders and its figures, with stand-in analyzers: odd
index files are refused clearly, nothing outside the folder is read, malformed findings and
failures fail closed and are counted apart (never as caught harm)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderation.analyzers.base import AnalysisInput, Analyzer, Finding
from moderation.errors import ModerationError
from moderation.pipeline.eval_report import html_page, markdown
from moderation.pipeline.evaluation import Labelled, read_labelled, run, summarise
from moderation.policy import load_policy
from moderation.settings import data_dir

POLICY = load_policy(data_dir("policies") / "default.yaml")
CATS = list(POLICY.categories)


def image(path: Path, colour: str = "white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path)
    return path


def test_index_files_are_read_leniently_and_refused_clearly(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("\ufefffile,labels,lang\n a.png ,hate|spam,en\nb.png,none,\n", "utf-8")
    items = read_labelled(tmp_path, CATS)  # a spreadsheet's BOM, spaces, `|` and `none`
    assert [(i.path.name, set(i.labels), i.lang) for i in items] == [
        ("a.png", {"hate", "spam"}, "en"),
        ("b.png", set(), ""),
    ]
    bad = {
        b"file,labels\na.png,hate\na.png,spam\n": "listed twice",
        b"file,labels\n/etc/passwd,hate\n": "no image",
        b"file,labels\n../a.png,hate\n": "no image",
        b"name,labels\na.png,hate\n": "`file` column",
        "file,labels\na.png,caf\xe9\n".encode("latin-1"): "not a UTF-8 CSV",
        b"file,labels\na.png,nonsense\n": "not categories",
    }
    for content, why in bad.items():
        (tmp_path / "labels.csv").write_bytes(content)
        with pytest.raises(ModerationError, match=why):
            read_labelled(tmp_path, CATS)


def test_folder_layout_never_follows_links_out(tmp_path: Path) -> None:
    outside = image(tmp_path / "outside" / "secret.png")
    image(tmp_path / "set" / "none" / "ok.png")
    (tmp_path / "set" / "spam").mkdir()
    os.symlink(outside, tmp_path / "set" / "spam" / "link.png")
    os.symlink(outside.parent, tmp_path / "set" / "hate")
    items = read_labelled(tmp_path / "set", CATS)
    assert [i.path.name for i in items] == ["ok.png"]


class Scripted(Analyzer):
    name = "scripted"

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def analyze(self, item: AnalysisInput) -> Finding:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


def test_failures_fail_closed_and_are_counted_apart(tmp_path: Path) -> None:
    harmful = [Labelled(image(tmp_path / f"h{i}.png"), frozenset({"hate"}), "en") for i in range(3)]
    broken = Labelled(tmp_path / "broken.png", frozenset({"hate"}), "en")
    broken.path.write_bytes(b"not an image")
    answers = iter(
        [
            Finding("scripted", "1", "lite", scores={"hate": 0.9}, covered=CATS),  # caught
            Finding("scripted", "1", "lite", scores={"hate": float("nan")}, covered=CATS),  # malformed
            RuntimeError("model crashed"),
        ]
    )
    results = run([*harmful, broken], POLICY, lambda stage: Scripted(next(answers)))
    actions = [r.action for r in results]
    assert actions[0] == "block" and actions[1] == "review" and actions[2] == "review" and actions[3] == "error"
    assert "malformed finding" in (results[1].error or "") and "model crashed" in (results[2].error or "")
    figures = summarise(results, POLICY, 1.0)
    # Only the one image that was really judged counts: a crashing model does not look careful.
    assert figures["harmful"] == 1 and figures["errors"] == 3
    assert figures["harmful_allowed"]["k"] == 0 and figures["categories"]["hate"]["n"] == 1
    assert len(figures["wrong"]) == 3  # the failures are listed among what went wrong


def test_reports_escape_what_file_names_carry(tmp_path: Path) -> None:
    item = Labelled(image(tmp_path / "x.png"), frozenset({"spam"}), "en")
    results = run([item], POLICY, lambda stage: Scripted(Finding("s", "1", "lite", scores={}, covered=CATS)))
    results[0].item = Labelled(tmp_path / "<img src=x onerror=alert(1)>|.png", item.labels, "en")
    figures = summarise(results, POLICY, 1.0)
    md, page = markdown("t", [("run", figures)]), html_page("t", [("run", figures)])
    assert "<img" not in md and "&lt;img" in md and "\\|" in md
    assert "<img" not in page and "&lt;img" in page


def test_recall_is_reported_per_language_and_category(tmp_path: Path) -> None:
    mark = POLICY.categories["drugs"].review_at
    items = [
        (Labelled(image(tmp_path / "e1.png"), frozenset({"drugs"}), "en"), {"drugs": mark}),  # at the mark: caught
        (Labelled(image(tmp_path / "e2.png"), frozenset({"drugs", "spam"}), "en"), {"spam": 0.99}),  # drugs missed
        (Labelled(image(tmp_path / "z1.png"), frozenset({"drugs"}), "zh"), {"drugs": 0.99}),
        (Labelled(image(tmp_path / "z2.png"), frozenset(), "zh"), {}),
    ]
    answers = iter(Finding("scripted", "1", "lite", scores=s, covered=CATS) for _, s in items)
    figures = summarise(run([i for i, _ in items], POLICY, lambda stage: Scripted(next(answers))), POLICY, 1.0)
    en, zh = figures["languages"]["en"]["recall"], figures["languages"]["zh"]["recall"]
    assert (en["drugs"]["k"], en["drugs"]["n"], en["spam"]["k"]) == (1, 2, 1) and set(en) == {"drugs", "spam"}
    assert (zh["drugs"]["k"], zh["drugs"]["n"]) == (1, 1) and set(zh) == {"drugs"}  # harmless rows add nothing
    assert figures["categories"]["drugs"]["recall"] == round(2 / 3, 3)
    md = markdown("t", [("run", figures)])
    assert "recall at the review mark, by language" in md
    assert "| drugs | 0.50 (1/2) | 1.00 (1/1) |" in md and "| spam | 1.00 (1/1) | - |" in md
