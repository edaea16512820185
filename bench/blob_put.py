"""What storing an upload costs the API host: CPU and wall time of `BlobStore.put` (and of `get`)
per image, on the filesystem store and on the S3 store, measured in this process only.

    .venv/bin/python bench/blob_put.py                  # 400 images of bench/pipeline.py's set
    .venv/bin/python bench/blob_put.py --images 1000 --rounds 3

The S3 side talks to a local S3-protocol server (moto, devtools/s3server.py) in another process:
its CPU is not counted here (in a deployment it is the object store's, not the API host's), and
its wall time is, so the wall figures include a Python server's answer time. The filesystem
store writes and `fdatasync`s under a temporary directory of var/. Both are given the SHA-256
already computed (`hashed_here=True`), as the API does. Rounds alternate file and S3.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.s3server import CREDENTIALS, s3_server
from moderation.intake.blobs import BlobStore, FileBlobStore
from moderation.intake.s3blobs import S3BlobStore

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "var" / "bench-images"


def load_images(n: int) -> list[tuple[bytes, str]]:
    files = sorted(IMAGES.glob("*.jpg"))[:n]
    if len(files) < n:
        sys.exit(f"{IMAGES} holds {len(files)} JPEGs; run bench/pipeline.py once to make them")
    return [(data, hashlib.sha256(data).hexdigest()) for data in (f.read_bytes() for f in files)]


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of this process, averaged over the n calls `fn` makes."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu) * 1000 / n, (time.perf_counter() - wall) * 1000 / n


def measure(store: BlobStore, images: list[tuple[bytes, str]]) -> dict[str, float]:
    put_cpu, put_wall = timed(lambda: [store.put(d, s, hashed_here=True) for d, s in images], len(images))
    get_cpu, get_wall = timed(lambda: [store.get(s) for _, s in images], len(images))
    return {"put_cpu_ms": put_cpu, "put_wall_ms": put_wall, "get_cpu_ms": get_cpu, "get_wall_ms": get_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    images = load_images(args.images)
    kb = statistics.mean(len(d) for d, _ in images) / 1024
    print(f"{len(images)} JPEGs, mean {kb:.0f} KB; {args.rounds} rounds, file and S3 alternately")
    results: dict[str, list[dict[str, float]]] = {"file": [], "s3": []}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=REPO / "var", prefix="blob-put-")))
        endpoint = stack.enter_context(s3_server(tmp / "s3.log"))
        os.environ.update(CREDENTIALS)
        for r in range(args.rounds):
            root = tmp / f"file-{r}"
            results["file"].append(measure(FileBlobStore(root), images))
            shutil.rmtree(root)
            s3 = S3BlobStore(f"bench-{r}", "blobs", endpoint_url=endpoint)
            s3.init()
            results["s3"].append(measure(s3, images))
    print("| store | put: CPU ms | put: wall ms | get: CPU ms | get: wall ms |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        keys = ("put_cpu_ms", "put_wall_ms", "get_cpu_ms", "get_wall_ms")
        cells = [statistics.median(run[k] for run in runs) for k in keys]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    print("(medians of the rounds; per image; CPU of this process only)")


if __name__ == "__main__":
    main()
