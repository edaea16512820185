"""Coverage-guided fuzzing with atheris (libFuzzer for Python), where it installs (`pip install
atheris`: Linux and macOS wheels for CPython 3.11). Optional: the Hypothesis suites are the
proof; this feeds the same contracts from coverage feedback through Pillow's Python plugins and
our parsers.

    python -m tests.fuzz.atheris_targets decoder -atheris_runs=20000 [corpus dir...]
    python -m tests.fuzz.atheris_targets hashlist -max_total_time=300

Targets: `decoder` (`inspect_image`: an ImageInfo or a 413/415/422 ModerationError), `hashlist`
(`parse_hash_list`: entries or a 4xx ModerationError), `message` (the gateway's JSON decoding
and the queue message's field checks, without a database). Anything else raised is a crash:
libFuzzer stops and writes the input to `crash-<sha1>`. The corpus starts from the Hypothesis
seeds (var/atheris/<target>/ when no directory is given). Bound time and memory per input with
libFuzzer's own flags (the defaults below: -timeout=5 -rss_limit_mb=2048).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

from tests.fuzz import known

with atheris.instrument_imports(include=["PIL", "moderation"]):
    from moderation.banks.admin import parse_hash_list
    from moderation.errors import ModerationError
    from moderation.intake.images import Limits, inspect_image

LIMITS = Limits(max_bytes=20 << 20, max_pixels=50_000_000, max_frames=500, max_total_pixels=400_000_000, hash_side=128)
REFUSALS = {"EMPTY_FILE", "IMAGE_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "IMAGE_CORRUPT", "IMAGE_TOO_MANY_PIXELS"}
REFUSALS |= {"DECOMPRESSION_BOMB", "TOO_MANY_FRAMES"}


def decoder(data: bytes) -> None:
    try:
        inspect_image(data, LIMITS)
    except ModerationError as exc:
        if exc.code not in REFUSALS:
            raise


def hashlist(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    if known.SKIP and known.long_csv_line(text):
        return
    try:
        parse_hash_list(text)
    except ModerationError as exc:
        if not exc.final:
            raise


def message(data: bytes) -> None:
    """What the gateway does with a body before any database: decode JSON (as `Gateway.handle`)."""
    if known.SKIP and known.deep_json(data):
        return
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return


TARGETS: dict[str, Callable[[bytes], None]] = {"decoder": decoder, "hashlist": hashlist, "message": message}


def seed_corpus(target: str, corpus: Path) -> Path:
    """Write the target's seeds into `corpus` unless it holds inputs already."""
    from tests.fuzz import strategies

    if not corpus.is_dir() or not any(corpus.iterdir()):
        corpus.mkdir(parents=True, exist_ok=True)
        if target == "decoder":
            seeds = list(strategies.seeds().values())
        elif target == "hashlist":
            seeds = [b"pdq,label\n" + b"ab" * 32 + b",x\n", b"\xef\xbb\xbfpdq\n" + b"0" * 64 + b"\n"]
        else:
            seeds = [b'{"external_id": "a", "image_b64": "YQ=="}']
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(seed)
    return corpus


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags] [corpus dirs]")
    target = argv.pop(1)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(str(seed_corpus(target, Path("var") / "atheris" / target)))
    defaults = {"-timeout=": "5", "-rss_limit_mb=": "2048"}
    argv += [flag + value for flag, value in defaults.items() if not any(a.startswith(flag) for a in argv)]
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
