"""Micro-batching on the CPU: how the batcher groups concurrent work, and what it costs.

    python bench/vlm_batching.py [--items 96] [--threads 32]

Builds a tiny GLM-4.6V-architecture checkpoint (no download), then drives `VlmAnalyzer.analyze`
from many threads at once — as the GPU worker's Celery thread pool does — with batch sizes 1
(no batching), 4 and 16 (the default; once more without the shared-prefix KV cache), and prints
images/s, the batch sizes the engine ran (from its own batch log) and per-item latency. The tiny
model's arithmetic is not a GPU's: this measures the mechanism (grouping, overhead, per-item
outcomes, prefill saved), not VLM throughput; that is bench/gpu_vlm.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def drive(analyzer: object, mine: list[object], latencies: list[float]) -> None:
    """One Celery thread's share of the work: analyze its items one after the other."""
    for item in mine:
        t0 = time.perf_counter()
        analyzer.analyze(item)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--side", type=int, default=112)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    import json
    import logging

    from devtools.synthetic_vlm import save_tiny_model
    from moderation.analyzers.base import AnalysisInput
    from moderation.analyzers.vlm import VlmAnalyzer
    from moderation.policy import TAXONOMY
    from moderation.settings import Settings

    logging.disable(logging.WARNING)
    answer = {
        "categories": {c: {"score": 0.1, "rationale": ""} for c in TAXONOMY},
        "confidence": 0.9, "ocr_text": "", "meme": False, "irony": False, "prompt_injection": False,
    }  # fmt: skip
    # The scripted weight double: a well-formed answer each time, so each batch is one model call.
    model = save_tiny_model(Path(tempfile.mkdtemp()) / "tiny", answer=json.dumps(answer))
    items = [
        AnalysisInput(f"s{i}", "t", Image.new("RGB", (300, 200), (i % 255, 80, 160)), f"{i:064x}", "caption", None,
                      None, 1, tuple(TAXONOMY))
        for i in range(args.items)
    ]  # fmt: skip
    print(f"vlm_batching {time.strftime('%Y-%m-%d')}: {args.items} images from {args.threads} threads, "
          f"image side {args.side}, {args.new_tokens} new tokens, tiny model on the CPU")  # fmt: skip
    for batch, shared in ((1, True), (4, True), (16, True), (16, False)):
        s = Settings(
            vlm_model=str(model), vlm_device="cpu", vlm_image_side=args.side,
            vlm_max_new_tokens=args.new_tokens, vlm_batch_max=batch, vlm_batch_wait_ms=50,
            vlm_prefix_cache=shared,
        )  # fmt: skip
        analyzer = VlmAnalyzer(settings=s)
        analyzer.analyze_batch(items[:2])  # warm up
        before = len(analyzer.engine.batch_log)
        latencies: list[float] = []
        started = time.perf_counter()
        threads = [
            threading.Thread(target=drive, args=(analyzer, items[k :: args.threads], latencies))
            for k in range(args.threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        calls = list(analyzer.engine.batch_log)[before:]
        sizes = [c.size for c in calls]
        lat = sorted(latencies)
        print(
            f"  batch_max {batch:>2}, prefix cache {'on ' if shared else 'off'}: {len(items) / wall:6.2f} images/s; "
            f"{len(calls)} model calls "
            f"(size mean {statistics.mean(sizes):.1f}, max {max(sizes)}); latency p50 {lat[len(lat) // 2]:.2f} s, "
            f"p95 {lat[int(len(lat) * 0.95) - 1]:.2f} s"
        )


if __name__ == "__main__":
    main()
