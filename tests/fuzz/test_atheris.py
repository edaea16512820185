"""The atheris targets (`atheris_targets`), run for a bounded number of inputs each where atheris
is installed (it is optional: skipped otherwise). A crash fails the test with libFuzzer's report
and the input it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytest.importorskip("atheris")

# Inputs per target: a few seconds each by default, minutes under HYPOTHESIS_PROFILE=long.
RUNS = {"ci": {"decoder": 1000, "hashlist": 10000, "message": 10000}}
RUNS["long"] = {"decoder": 20000, "hashlist": 100000, "message": 200000}


@pytest.mark.parametrize("target", ["decoder", "hashlist", "message"])
def test_atheris_target_finds_no_crash(target: str, tmp_path: Path) -> None:
    from tests.fuzz.atheris_targets import seed_corpus

    runs = RUNS.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), RUNS["ci"])[target]
    corpus = seed_corpus(target, tmp_path / "corpus")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, "-m", "tests.fuzz.atheris_targets", target, f"-atheris_runs={runs}", "-seed=1"]
    if target == "hashlist":
        cmd.append("-max_len=200000")  # past the csv module's 131,072-character field limit
    cmd += [f"-artifact_prefix={artifacts}/", str(corpus)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=3000)
    crashes = sorted(artifacts.iterdir())
    report = "\n".join(line for line in done.stderr.splitlines() if not line.startswith(("TIFF", "JPEG", "ZIP")))
    assert done.returncode == 0 and not crashes, f"{crashes}\n{report[-3000:]}"
