"""The multi-index PDQ search returns exactly what brute force returns."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.banks.hashindex import PdqIndex, brute_force, pdq_to_words


def flip(rng: np.random.Generator, q: np.ndarray, k: int) -> np.ndarray:
    q = q.copy()
    for b in rng.choice(256, k, replace=False):
        q[b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
    return q


@pytest.mark.parametrize("radius", [0, 8, 15, 16, 31, 40])
def test_index_matches_brute_force(radius: int) -> None:
    rng = np.random.default_rng(radius)
    words = rng.integers(0, 2**64 - 1, (20_000, 4), dtype=np.uint64, endpoint=True)
    # Near-duplicate clusters, so that there is something to find at every distance.
    words[:200] = [flip(rng, words[200 + i], int(rng.integers(0, 40))) for i in range(200)]
    index = PdqIndex(words)
    for i in range(60):
        query = flip(rng, words[int(rng.integers(0, 400))], int(rng.integers(0, 40)))
        assert index.search(query, radius) == brute_force(words, query, radius), i


def test_hex_round_trip_and_distances() -> None:
    a = "f" * 64
    b = "0" * 63 + "f"
    words = pdq_to_words([a, b])
    assert words.shape == (2, 4) and int(words[0, 0]) == 2**64 - 1 and int(words[1, 3]) == 15
    index = PdqIndex(words)
    assert index.search(pdq_to_words(["0" * 64])[0], 31) == [(1, 4)]
    assert PdqIndex(pdq_to_words([])).search(words[0], 31) == []
