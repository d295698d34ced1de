"""Leaderboard statistics from pairwise battles: Bradley–Terry ratings, bootstrap intervals, win rates.

A battle is ``(model_a, model_b, outcome)`` with outcome "A" (model_a won), "B" (model_b won),
"tie" or "both_bad". Arena votes become battles with ``db.arena.votes_to_battles``.

Bradley–Terry model: P(i beats j) = 1 / (1 + base ** ((R_j - R_i) / scale)), i.e. a logistic
regression on rating differences. Following Chatbot Arena, ratings are reported on an Elo-like
scale (``init_rating + scale * log_base(strength)``, 1000 + 400·log10 by default) and a tie or
"both_bad" counts as half a win for each side.

Style control (Chatbot Arena, "Does style matter?", 2024): with ``style`` covariates per battle
(``style_covariates``: normalised differences in reply length and number of items, model_a minus
model_b), the logistic regression becomes ``logit P(a wins) = theta_a - theta_b + style @ beta``
and the ratings are the ``theta`` part alone: what a model is worth once its style is paid for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

Battle = tuple[str, str, str]
# Prior on style coefficients: only enough to keep them finite when a style always wins.
STYLE_L2 = 1e-6

# Points for model_a per outcome: ties and "both bad" are half a win each way.
_SCORE_A = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}


class _Encoded:
    """Battles as arrays: model indices, model_a's score, and one row per distinct model pair."""

    def __init__(self, battles: Sequence[Battle]) -> None:
        self.models = sorted({m for a, b, _ in battles for m in (a, b)})
        index = {m: i for i, m in enumerate(self.models)}
        a, b, score = [], [], []
        for number, (model_a, model_b, outcome) in enumerate(battles):
            if outcome not in _SCORE_A:
                raise ValueError(
                    f"battle {number} ({model_a} vs {model_b}) has outcome {outcome!r}; "
                    f"use one of {', '.join(_SCORE_A)}"
                )
            if model_a == model_b:
                raise ValueError(
                    f"battle {number} pits {model_a!r} against itself; drop it or name the "
                    "versions apart (votes_to_battles(..., with_version=True))"
                )
            a.append(index[model_a])
            b.append(index[model_b])
            score.append(_SCORE_A[outcome])
        self.a = np.asarray(a, dtype=np.int64)
        self.b = np.asarray(b, dtype=np.int64)
        self.score = np.asarray(score, dtype=np.float64)
        # Battles of the same ordered pair share one likelihood term: fits cost O(pairs), not O(battles).
        self.pair_keys, self.pair_of_battle = np.unique(
            self.a * len(self.models) + self.b, return_inverse=True
        )
        self.pair_a = self.pair_keys // len(self.models)
        self.pair_b = self.pair_keys % len(self.models)

    def pair_totals(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(battles, points of the first model) per pair, each battle counted ``weights`` times."""
        n_pairs = len(self.pair_keys)
        battles = np.bincount(self.pair_of_battle, weights=weights, minlength=n_pairs)
        points = np.bincount(self.pair_of_battle, weights=weights * self.score, minlength=n_pairs)
        return battles, points


def _fit_strengths(
    encoded: _Encoded,
    weights: np.ndarray,
    l2: float,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Maximum-likelihood log-strengths (natural log), centred on 0.

    Minimises the convex negative log-likelihood plus ``l2/2 * ||theta||^2`` with L-BFGS-B and its
    analytic gradient. The tiny prior makes the optimum unique (ratings are otherwise only defined
    up to a constant) and finite when a model won or lost every battle.
    """
    n_models = len(encoded.models)
    battles, points = encoded.pair_totals(weights)
    pa, pb = encoded.pair_a, encoded.pair_b

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta[pa] - theta[pb]
        # log sigmoid(x) = -logaddexp(0, -x), stable for large |x|.
        nll = np.sum(
            points * np.logaddexp(0.0, -diff) + (battles - points) * np.logaddexp(0.0, diff)
        )
        residual = battles * _sigmoid(diff) - points  # d nll / d diff
        grad = np.bincount(pa, residual, n_models) - np.bincount(pb, residual, n_models)
        return float(nll + 0.5 * l2 * theta @ theta), grad + l2 * theta

    x0 = np.zeros(n_models) if start is None else start
    result = minimize(
        objective, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15}
    )
    return result.x - result.x.mean()


def _fit_with_style(
    encoded: _Encoded,
    style: np.ndarray,
    weights: np.ndarray,
    l2: float,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Log-strengths and style coefficients ``[theta..., beta...]``, theta centred on 0.

    The same penalised likelihood as ``_fit_strengths`` with ``style @ beta`` added to each
    battle's logit. Beta gets only the tiny ``STYLE_L2`` prior, whatever ``l2`` is: style is one
    effect estimated from every battle, and shrinking it would hand its share back to the models
    that have the style (a rating prior of 0.1 left a longer-replies model ~370 points ahead).
    One term per battle, because covariates differ between battles of the same pair.
    """
    n_models = len(encoded.models)
    a, b, score = encoded.a, encoded.b, encoded.score

    penalty = np.full(n_models + style.shape[1], l2)
    penalty[n_models:] = STYLE_L2

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        theta, beta = params[:n_models], params[n_models:]
        logit = theta[a] - theta[b] + style @ beta
        nll = np.sum(
            weights * (score * np.logaddexp(0.0, -logit) + (1.0 - score) * np.logaddexp(0.0, logit))
        )
        residual = weights * (_sigmoid(logit) - score)  # d nll / d logit
        grad_theta = np.bincount(a, residual, n_models) - np.bincount(b, residual, n_models)
        grad = np.concatenate([grad_theta, style.T @ residual])
        return float(nll + 0.5 * params @ (penalty * params)), grad + penalty * params

    x0 = np.zeros(n_models + style.shape[1]) if start is None else start
    result = minimize(
        objective, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15}
    )
    params = result.x.copy()
    params[:n_models] -= params[:n_models].mean()
    return params


def _style_matrix(style: np.ndarray | None, n_battles: int) -> np.ndarray | None:
    if style is None:
        return None
    matrix = np.asarray(style, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != n_battles:
        raise ValueError(
            f"`style` has shape {matrix.shape}; give one row of covariates per battle "
            f"({n_battles} rows), e.g. from style_covariates"
        )
    return matrix


def style_covariates(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Style covariates per battle: ``(a - b) / (a + b)`` per column, scaled to unit RMS.

    ``counts_a`` / ``counts_b`` are ``(battles, k)`` style counts of model_a's and model_b's
    replies (e.g. words and items). A column is 0 where both counts are 0. Columns are divided by
    their root mean square but not centred: swapping the two sides of a battle must flip the sign
    of its covariates, and a model that is always model_a would otherwise lose its signal.
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(total > 0, (a - b) / total, 0.0)
    rms = np.sqrt(np.mean(diff**2, axis=0)) if len(diff) else np.zeros(diff.shape[1:])
    return np.divide(diff, rms, out=np.zeros_like(diff), where=rms > 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _to_rating(theta: np.ndarray, scale: float, base: float, init_rating: float) -> np.ndarray:
    return init_rating + scale * theta / math.log(base)


def fit_bradley_terry(
    battles: Sequence[Battle],
    *,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    l2: float = 1e-6,
    style: np.ndarray | None = None,
) -> dict[str, float]:
    """Bradley–Terry ratings of every model in ``battles``, by maximum likelihood.

    Ties and "both_bad" count as half a win for each side (the Chatbot Arena convention). The
    log-likelihood is maximised with ``scipy.optimize.minimize`` (L-BFGS-B, analytic gradient)
    under a tiny L2 prior ``l2`` on the natural-log strengths, which makes the ratings unique and
    keeps them finite for a model that won (or lost) everything; with ``l2=1e-6`` it moves
    ordinary ratings by far less than a point. Ratings are ``init_rating + scale * log_base(
    strength)`` and average ``init_rating``. Models in disconnected groups (never compared, not even
    through others) are placed relative to each other by the prior alone.

    For two models where A won ``w`` of ``n`` battles, A's lead is ``scale * log_base(w / (n - w))``.
    With ``style`` (one row of covariates per battle, see ``style_covariates``) the ratings are
    style-controlled, as the module docstring says.
    """
    if not battles:
        return {}
    encoded = _Encoded(battles)
    weights = np.ones(len(encoded.score))
    matrix = _style_matrix(style, len(encoded.score))
    if matrix is None:
        theta = _fit_strengths(encoded, weights, l2)
    else:
        theta = _fit_with_style(encoded, matrix, weights, l2)[: len(encoded.models)]
    ratings = _to_rating(theta, scale, base, init_rating)
    return dict(zip(encoded.models, ratings.tolist(), strict=True))


def bootstrap_ratings(
    battles: Sequence[Battle],
    n: int = 1000,
    seed: int = 0,
    *,
    ci: float = 0.95,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    l2: float = 1e-6,
    style: np.ndarray | None = None,
) -> dict[str, tuple[float, float, float]]:
    """``{model: (rating, low, high)}``: the full-data rating and a percentile bootstrap interval.

    The battles are resampled with replacement ``n`` times and refitted; ``low`` / ``high`` are
    the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles of a model's ratings over the resamples in
    which it played at least once. Other arguments (``style`` included) as in
    ``fit_bradley_terry``; a battle keeps its covariates when it is resampled.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"`ci` is {ci}; give the interval's coverage as a fraction, e.g. 0.95")
    if n < 1:
        raise ValueError(f"`n` is {n}; use at least 1 bootstrap resample (1000 is usual)")
    if not battles:
        return {}
    encoded = _Encoded(battles)
    n_battles, n_models = len(encoded.score), len(encoded.models)
    matrix = _style_matrix(style, n_battles)

    def fit(weights: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        if matrix is None:
            return _fit_strengths(encoded, weights, l2, start=start)
        return _fit_with_style(encoded, matrix, weights, l2, start=start)

    full = fit(np.ones(n_battles))
    theta = full[:n_models]
    rng = np.random.default_rng(seed)
    samples = np.empty((n, n_models))
    # Each fit is L-BFGS-B on a handful of parameters: BLAS worker threads only add
    # synchronisation there (measured 10-50x slower with the default thread count).
    with threadpool_limits(limits=1, user_api="blas"):
        for row in range(n):
            counts = np.bincount(rng.integers(0, n_battles, n_battles), minlength=n_battles)
            samples[row] = fit(counts.astype(np.float64), start=full)[:n_models]
            played = np.bincount(encoded.a, counts, n_models) + np.bincount(
                encoded.b, counts, n_models
            )
            # A model absent from a resample has no rating there, only the prior's.
            samples[row, played == 0] = np.nan
    point = _to_rating(theta, scale, base, init_rating)
    low, high = np.nanquantile(
        _to_rating(samples, scale, base, init_rating), [(1 - ci) / 2, (1 + ci) / 2], axis=0
    )
    return {
        model: (float(point[i]), float(low[i]), float(high[i]))
        for i, model in enumerate(encoded.models)
    }


def win_rate_matrix(battles: Sequence[Battle]) -> pd.DataFrame:
    """Share of points the row model took from the column model (ties and both_bad = 0.5).

    Models are sorted by name; cells of pairs that never met, and the diagonal, are NaN.
    """
    if not battles:
        return pd.DataFrame(dtype=float)
    encoded = _Encoded(battles)
    size = len(encoded.models)
    points = np.zeros((size, size))
    games = np.zeros((size, size))
    # Each battle gives model_a `score` points against model_b, and model_b the rest.
    np.add.at(points, (encoded.a, encoded.b), encoded.score)
    np.add.at(points, (encoded.b, encoded.a), 1.0 - encoded.score)
    np.add.at(games, (encoded.a, encoded.b), 1.0)
    np.add.at(games, (encoded.b, encoded.a), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(games > 0, points / games, np.nan)
    frame = pd.DataFrame(rates, index=encoded.models, columns=encoded.models)
    frame.index.name, frame.columns.name = "model", "opponent"
    return frame


def vote_counts(battles: Sequence[Battle]) -> pd.DataFrame:
    """Per model: ``battles``, ``wins``, ``losses``, ``ties`` and ``both_bad``, most battles first."""
    columns = ["battles", "wins", "losses", "ties", "both_bad"]
    counts: dict[str, dict[str, int]] = {}
    for model_a, model_b, outcome in battles:
        if outcome not in _SCORE_A:
            raise ValueError(
                f"battle ({model_a} vs {model_b}) has outcome {outcome!r}; "
                f"use one of {', '.join(_SCORE_A)}"
            )
        for model, won in ((model_a, "A"), (model_b, "B")):
            row = counts.setdefault(model, dict.fromkeys(columns, 0))
            row["battles"] += 1
            if outcome == "tie":
                row["ties"] += 1
            elif outcome == "both_bad":
                row["both_bad"] += 1
            else:
                row["wins" if outcome == won else "losses"] += 1
    frame = pd.DataFrame.from_dict(counts, orient="index", columns=columns, dtype="int64")
    frame.index.name = "model"
    return frame.sort_values(["battles", "wins"], ascending=False, kind="stable")
