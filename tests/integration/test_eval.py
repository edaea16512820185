"""`moderation eval DIR`: labelled images rendered by the synthetic generator, through the real lite
analyzer (OCR, rules, text classifier) and the default policy, with the report written; the
folder-per-label layout; bad input refused with a clear message."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.support.paths import REPO

TEXTS = [
    {"text": "sending the address of that snitch, his mom answers the door at 6", "labels": ["privacy"]},
    {"text": "whoever finds my brother's bike please call me", "labels": []},
    {"text": "cheap glocks no paperwork, pickup behind the mall", "labels": ["weapons"]},
    {"text": "happy birthday grandma, we love you", "labels": []},
    {"text": "出售各种证件，身份证驾驶证，包过", "labels": ["scam_fraud"], "lang": "zh"},  # noqa: RUF001
    {"text": "今天的晚霞真好看", "labels": [], "lang": "zh"},
]


def moderation(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODERATION_POLICIES_DIR": str(REPO / "policies")}
    env.pop("DATABASE_URL", None)  # nothing is stored: eval needs no services
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def said(r: subprocess.CompletedProcess[str]) -> str:
    """stderr with the console's line wrapping undone."""
    return " ".join(r.stderr.split())


def render_set(tmp_path: Path) -> Path:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps(t, ensure_ascii=False) for t in TEXTS), encoding="utf-8")
    out = tmp_path / "set"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "render_texts.py"), str(out), "--texts", str(texts), "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_eval_reports_on_rendered_images(tmp_path: Path) -> None:
    folder = render_set(tmp_path)
    with (folder / "labels.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(TEXTS) and all((folder / r["file"]).is_file() for r in rows)
    r = moderation(str(folder), "--policy", "default", "--report", "report.md", "--json", "figures.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text(encoding="utf-8"))["run"]
    assert figures["images"] == 6 and figures["harmful"] == 3 and figures["harmless"] == 3
    assert set(figures["languages"]) == {"en", "zh"}
    assert figures["harmful_allowed"]["n"] == 3 and figures["harmless_held"]["n"] == 3
    assert figures["ms_per_image"]["lite"] > 0 and figures["errors"] == 0
    assert set(figures["categories"]) >= {"privacy", "weapons", "scam_fraud", "hate"}
    assert figures["categories"]["weapons"]["n"] == 1
    wrong = {w["file"] for w in figures["wrong"]}
    by_file = {Path(row["file"]).name: row for row in rows}
    # "wrong" lists exactly the harmful images allowed and the harmless ones held.
    for name, row in by_file.items():
        labels = row["labels"]
        action_counts = figures["confusion"][labels or "harmless"]
        assert sum(action_counts.values()) >= 1
        if name in wrong:
            w = next(x for x in figures["wrong"] if x["file"] == name)
            assert (w["action"] == "allow") == bool(labels)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## run: per category" in report and "| privacy |" in report and "harmful allowed" in report
    # The same run as HTML: one page, escaped, no scripts.
    r = moderation(str(folder), "--report", "report.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<script" not in page and "labels x actions" in page


def test_eval_reads_one_folder_per_label_and_refuses_bad_input(tmp_path: Path) -> None:
    for label, colour in (("none", "white"), ("spam", "gray")):
        (tmp_path / "set" / label).mkdir(parents=True)
        Image.new("RGB", (200, 120), colour).save(tmp_path / "set" / label / "a.png")
    (tmp_path / "set" / "none" / "notes.txt").write_text("not an image")
    r = moderation(str(tmp_path / "set"), "--json", "f.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads((tmp_path / "f.json").read_text())["run"]
    assert figures["images"] == 2 and figures["harmful"] == 1 and figures["categories"]["spam"]["n"] == 1

    (tmp_path / "set" / "not_a_category").mkdir()
    r = moderation(str(tmp_path / "set"), cwd=tmp_path)
    assert r.returncode == 2 and "not_a_category" in said(r) and "Traceback" not in r.stderr
    r = moderation(str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2 and "not a folder" in said(r)
    bad = tmp_path / "csv"
    bad.mkdir()
    (bad / "labels.csv").write_text("file,labels\n../../etc/passwd,spam\n")
    r = moderation(str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "no image" in said(r)
    r = moderation(str(tmp_path / "set"), "--adapter", "x", cwd=tmp_path)
    assert r.returncode == 2 and "--engine" in said(r)
