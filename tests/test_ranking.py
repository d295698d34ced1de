"""Bradley–Terry ratings against answers known in closed form and against a logistic regression."""

from __future__ import annotations

import math

import numpy as np
import pytest

from db.ranking import bootstrap_ratings, fit_bradley_terry, vote_counts, win_rate_matrix

SCALE = 400 / math.log(10)  # Elo points per unit of natural-log strength


def _battles(wins: int, losses: int, ties: int = 0) -> list[tuple[str, str, str]]:
    return [("x", "y", "A")] * wins + [("x", "y", "B")] * losses + [("x", "y", "tie")] * ties


def _synthetic(n: int, seed: int) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Battles among four models with known ratings; 10% of the votes are ties or both bad."""
    truth = {"popularity": 850.0, "sasrec": 950.0, "llm": 1050.0, "pecrs": 1150.0}
    models = list(truth)
    rng = np.random.default_rng(seed)
    battles = []
    for _ in range(n):
        a, b = rng.choice(len(models), size=2, replace=False)
        p_a = 1 / (1 + 10 ** ((truth[models[b]] - truth[models[a]]) / 400))
        draw = rng.random()
        if draw < 0.1:
            outcome = "tie" if draw < 0.05 else "both_bad"
        else:
            outcome = "A" if rng.random() < p_a else "B"
        battles.append((models[a], models[b], outcome))
    return truth, battles


@pytest.mark.parametrize(("wins", "n"), [(7, 10), (1, 4), (90, 100)])
def test_two_models_recover_the_observed_win_rate(wins: int, n: int) -> None:
    ratings = fit_bradley_terry(_battles(wins, n - wins))
    lead = ratings["x"] - ratings["y"]
    assert lead == pytest.approx(400 * math.log10(wins / (n - wins)), abs=1e-3)
    assert 1 / (1 + 10 ** (-lead / 400)) == pytest.approx(wins / n, abs=1e-6)
    assert (ratings["x"] + ratings["y"]) / 2 == pytest.approx(1000.0)


def test_ties_and_both_bad_count_half_a_win_each_way() -> None:
    # 1 win + 2 ties = 2 points of 3 for x, so P(x beats y) = 2/3.
    with_ties = fit_bradley_terry(_battles(1, 0, ties=2))
    assert with_ties["x"] - with_ties["y"] == pytest.approx(400 * math.log10(2), abs=1e-3)
    both_bad = fit_bradley_terry([("x", "y", "A"), ("x", "y", "both_bad"), ("y", "x", "both_bad")])
    assert both_bad == pytest.approx(with_ties)


def test_order_within_a_battle_does_not_matter() -> None:
    _, battles = _synthetic(300, seed=1)
    swapped = [(b, a, {"A": "B", "B": "A"}.get(o, o)) for a, b, o in battles]
    assert fit_bradley_terry(swapped) == pytest.approx(fit_bradley_terry(battles), abs=1e-4)


def test_agrees_with_an_unpenalised_logistic_regression() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    truth, battles = _synthetic(3000, seed=0)
    models = sorted(truth)
    # Chatbot Arena's formulation: +1 for model_a, -1 for model_b; a tie is half a win each way.
    rows, labels, weights = [], [], []
    for a, b, outcome in battles:
        row = np.zeros(len(models))
        row[models.index(a)], row[models.index(b)] = 1.0, -1.0
        score = {"A": 1.0, "B": 0.0}.get(outcome, 0.5)
        for label, weight in ((1, score), (0, 1.0 - score)):
            if weight:
                rows.append(row)
                labels.append(label)
                weights.append(weight)
    logit = linear_model.LogisticRegression(
        C=np.inf, fit_intercept=False, tol=1e-10, max_iter=10_000
    )
    logit.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    coef = logit.coef_[0] - logit.coef_[0].mean()
    expected = dict(zip(models, 1000 + SCALE * coef, strict=True))

    ratings = fit_bradley_terry(battles)
    assert ratings == pytest.approx(expected, abs=0.05)
    # And the fit is close to the ratings the battles were drawn from.
    assert ratings == pytest.approx(truth, abs=40)


def test_a_model_that_won_everything_still_gets_a_finite_rating() -> None:
    ratings = fit_bradley_terry(_battles(10, 0) + [("y", "z", "A"), ("z", "y", "A")])
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["x"] > ratings["y"]


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_data() -> None:
    _, few = _synthetic(200, seed=2)
    _, many = _synthetic(2000, seed=2)
    small = bootstrap_ratings(few, n=200, seed=0)
    large = bootstrap_ratings(many, n=200, seed=0)
    for intervals in (small, large):
        for rating, low, high in intervals.values():
            assert low <= rating <= high
    assert bootstrap_ratings(few, n=200, seed=0) == small  # the seed makes it reproducible
    for model in small:
        assert large[model][2] - large[model][1] < 0.6 * (small[model][2] - small[model][1])
    assert {m: r for m, (r, _, _) in large.items()} == pytest.approx(fit_bradley_terry(many))


def test_win_rate_matrix_and_vote_counts() -> None:
    battles = [("x", "y", "A"), ("x", "y", "tie"), ("y", "z", "both_bad"), ("z", "x", "A")]
    rates = win_rate_matrix(battles)
    assert rates.loc["x", "y"] == pytest.approx(0.75)
    assert rates.loc["y", "x"] == pytest.approx(0.25)
    assert rates.loc["x", "z"] == 0.0 and rates.loc["z", "x"] == 1.0
    assert math.isnan(rates.loc["x", "x"])

    counts = vote_counts(battles)
    assert counts.loc["x"].to_dict() == {
        "battles": 3,
        "wins": 1,
        "losses": 1,
        "ties": 1,
        "both_bad": 0,
    }
    assert counts.loc["y"].to_dict() == {
        "battles": 3,
        "wins": 0,
        "losses": 1,
        "ties": 1,
        "both_bad": 1,
    }
    assert list(counts.index) == ["x", "y", "z"]


def test_bad_input_is_named_and_no_battles_give_empty_results() -> None:
    with pytest.raises(ValueError, match="outcome 'win'"):
        fit_bradley_terry([("x", "y", "win")])
    with pytest.raises(ValueError, match="against itself"):
        fit_bradley_terry([("x", "x", "A")])
    assert fit_bradley_terry([]) == {}
    assert bootstrap_ratings([]) == {}
    assert win_rate_matrix([]).empty and vote_counts([]).empty
