"""Deterministic splits (paper §4.2): 10% to train π_weak, 40% to lock, 30% to elicit, 20% to validate."""

from __future__ import annotations

import numpy as np

SPLITS: dict[str, float] = {"weak": 0.1, "lock": 0.4, "elicit": 0.3, "val": 0.2}


def split_indices(n: int, seed: int, fractions: dict[str, float] = SPLITS) -> dict[str, np.ndarray]:
    """Partition range(n) by a seeded permutation; sizes are rounded down, the last split takes the rest."""
    order = np.random.default_rng(seed).permutation(n)
    out: dict[str, np.ndarray] = {}
    start = 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = n if i == len(names) - 1 else start + int(n * fractions[name])
        out[name] = np.sort(order[start:end])
        start = end
    return out
