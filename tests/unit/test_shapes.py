"""Extreme aspect ratios cost the lite analyzer bounded memory and time (issue 10, finding 10).

A 1x60,000 PNG is 318 bytes and passes every intake cap; before the fix the nudity detector
padded it to a 60,000^2 square (10 GB) and OCR of 1-3 px strips took GBs per tile. Each shape
runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.paths import REPO

PROBE = """
import json, resource, sys, time
from PIL import Image
from moderation.analyzers.base import AnalysisInput
from moderation.analyzers.lite import LiteAnalyzer
analyzer = LiteAnalyzer()
analyzer.warmup()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for w, h in json.loads(sys.argv[1]):
    started = time.perf_counter()
    item = AnalysisInput(submission_id="s", tenant_id="t", image=Image.new("RGB", (w, h), "white"), sha256="",
                         categories=("nudity", "harassment"))
    f = analyzer.analyze(item)
    out.append({"shape": [w, h], "s": time.perf_counter() - started, "error": f.error, "confidence": f.confidence})
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grown_mb": grown, "nudity": analyzer.nudity is not None, "runs": out}))
"""

# The bound: what the analyzer may add to its warmed-up process for any of these shapes.
MAX_GROWTH_MB = 250
MAX_SECONDS = 15


@pytest.mark.parametrize(
    "shapes",
    [[[1, 60000], [60000, 1]], [[3, 40000], [40000, 3]], [[9, 60000], [60000, 9]], [[2, 1500], [1500, 2]]],
    ids=["1px", "3px", "9px", "short"],
)
def test_thin_strips_cost_bounded_memory_and_time(shapes: list[list[int]]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(shapes)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nudity"], "the [nudenet] extra is installed by `make test`: the detector must be measured too"
    assert result["grown_mb"] < MAX_GROWTH_MB, result
    for run in result["runs"]:
        assert run["s"] < MAX_SECONDS, run
        assert run["error"] is None, run
        w, h = run["shape"]
        if min(w, h) < 8:  # nothing legible can be read: the finding says so, a person decides
            assert run["confidence"] < 0.6, run
