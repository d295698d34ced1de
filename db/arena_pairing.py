"""Blind-mode pair selection: spend votes where the leaderboard is least sure.

Every unordered pair ``{i, j}`` of available models is drawn with probability proportional to

    w_ij = 1 / sqrt(1 + n_ij) * (1/2 + 2 * p_ij * (1 - p_ij))

where ``n_ij`` is how many stored battles the two already fought and ``p_ij`` is the chance that
``i`` beats ``j`` under a Bradley–Terry fit of all stored battles (with a weak prior, so unknown
models sit at 1/2). The first factor favours pairs with few battles; the second ranges from 1/2
(the outcome is a foregone conclusion) to 1 (a coin flip), so close pairs get more votes but no
pair is ever starved. Sides are then random, so neither model owns the left panel.

The history is the database's stored votes, so the allocation survives a restart of the demo.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

from db.ranking import fit_bradley_terry

Battle = tuple[str, str, str]
PRIOR_L2 = 0.1  # the leaderboard's prior: a handful of votes cannot make a pair look settled


def pair_weights(models: Sequence[str], battles: Sequence[Battle]) -> dict[tuple[str, str], float]:
    """``{(i, j): w_ij}`` for every pair of ``models`` (``i < j``), by the module's rule."""
    ratings = fit_bradley_terry(battles, l2=PRIOR_L2) if battles else {}
    fought = Counter(tuple(sorted((a, b))) for a, b, _ in battles)
    weights = {}
    for i, j in combinations(sorted(set(models)), 2):
        gap = ratings.get(j, 1000.0) - ratings.get(i, 1000.0)
        p = 1.0 / (1.0 + 10 ** (gap / 400.0))
        weights[(i, j)] = (0.5 + 2.0 * p * (1.0 - p)) / math.sqrt(1 + fought[(i, j)])
    return weights


def draw_pair(
    models: Sequence[str], rng: random.Random, battles: Sequence[Battle] = ()
) -> tuple[str, str]:
    """Two different models as ``(left, right)``: a pair drawn by ``pair_weights``, random sides."""
    if len(set(models)) < 2:
        raise ValueError(
            f"the arena needs two available models; the backend serves {len(set(models))}"
        )
    weights = pair_weights(models, battles)
    pairs = list(weights)
    (i, j) = rng.choices(pairs, weights=[weights[p] for p in pairs])[0]
    return (i, j) if rng.random() < 0.5 else (j, i)
