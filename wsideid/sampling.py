"""Which stored pieces of an image verification compares: all of them for a small image, a
spread of them for a large one, and every piece that was rewritten."""
from __future__ import annotations

import hashlib

import numpy as np

FULL_COMPARE_BYTES = 256 << 20
SAMPLE_RUNS = 256


def sample(counts, must) -> list[int]:
    n = len(counts)
    if int(np.asarray(counts).sum()) <= FULL_COMPARE_BYTES or n <= SAMPLE_RUNS:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, SAMPLE_RUNS).astype(int).tolist()) | set(must))


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
