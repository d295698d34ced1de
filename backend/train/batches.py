"""Batching shared by the training loops."""

from __future__ import annotations

import random
from collections.abc import Sequence


def epoch_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One shuffled epoch of batches that hold similar lengths (less padding: HF's group_by_length).

    Shuffle, sort by length within windows of 16 batches, cut into batches, shuffle the batches.
    """
    order = rng.sample(range(len(lengths)), len(lengths))
    window = batch_size * 16
    grouped = [
        sorted(order[i : i + window], key=lambda j: -lengths[j])
        for i in range(0, len(order), window)
    ]
    batches = [g[i : i + batch_size] for g in grouped for i in range(0, len(g), batch_size)]
    rng.shuffle(batches)
    return batches
