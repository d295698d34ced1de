"""Analysis and export of human-evaluation judgments (db.analysis, db.agreement, db.export).

Statistics are checked against hand-worked cases and against the libraries they wrap; the
campaign is built directly with the schema classes in a temporary SQLite database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from db.agreement import (
    _alpha_from_coincidences,
    _unit_coincidences,
    agreement,
    annotator_agreement,
    kendall_w,
)
from db.analysis import (
    FRAME_COLUMNS,
    figures,
    judgments_frame,
    pairwise_ratings,
    pairwise_summary,
    paper_table,
    rating_summary,
    wide_frame,
)
from db.export import export_campaign
from db.schema import Annotator, Assignment, Campaign, Context, Judgment, Response, System, Task
from db.session import get_engine, init_db, session_scope

CRITERIA = [
    {"name": "relevance", "kind": "rating", "scale": [1, 5], "labels": {}, "rubric": ""},
    {"name": "overall", "kind": "pairwise", "scale": ["A", "B", "tie"], "labels": {}, "rubric": ""},
]
# (annotator, context, system) -> rating; every annotator rates every response once.
RATINGS = {
    ("ann1", "c1", "alpha"): 4,
    ("ann2", "c1", "alpha"): 5,
    ("ann3", "c1", "alpha"): 4,
    ("ann1", "c1", "gamma"): 2,
    ("ann2", "c1", "gamma"): 3,
    ("ann3", "c1", "gamma"): 2,
    ("ann1", "c2", "alpha"): 3,
    ("ann2", "c2", "alpha"): 4,
    ("ann3", "c2", "alpha"): 5,
    ("ann1", "c2", "gamma"): 1,
    ("ann2", "c2", "gamma"): 2,
    ("ann3", "c2", "gamma"): 1,
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    engine = init_db(url)
    _build_campaign(engine)
    yield engine
    get_engine(url).dispose()


def _build_campaign(engine) -> None:
    """Campaign "study": 4 rating tasks + 1 gold task, 2 pairwise tasks, 3 annotators + 1 excluded.

    ann1 first rates (c1, alpha) 1, then edits it to 4 (revision 1), so 4 must count. The excluded
    annotator "spammer" answers everything with 1 / "B"; the gold task is judged by ann1.
    """
    with session_scope(engine) as session:
        campaign = Campaign(name="study", criteria=CRITERIA, task_kinds=["rating", "pairwise"])
        systems = {
            "alpha": System(name="alpha"),
            "gamma": System(name="gamma", version="v2"),
        }
        annotators = {
            name: Annotator(name=name, token_hash=f"{i:064x}", excluded=name == "spammer")
            for i, name in enumerate(["ann1", "ann2", "ann3", "spammer"])
        }
        contexts = {
            name: Context(source=source, external_id=name, dialogue={"turns": []})
            for name, source in [("c1", "redial"), ("c2", "inspired"), ("gold", "redial")]
        }
        responses = {
            (c, s): Response(context=contexts[c], system=systems[s], text=f"{s} on {c}")
            for c in contexts
            for s in systems
        }
        session.add_all([campaign, *responses.values(), *annotators.values()])
        session.flush()

        def task(kind, context, a, b=None, gold=None) -> Task:
            row = Task(
                campaign=campaign,
                kind=kind,
                context_id=contexts[context].id,
                response_a_id=responses[(context, a)].id,
                response_b_id=None if b is None else responses[(context, b)].id,
                gold=gold,
            )
            session.add(row)
            return row

        def judge(task_row, annotator, criterion, left_is_a=True, **answer) -> Assignment:
            assignment = Assignment(
                task=task_row, annotator=annotators[annotator], left_is_a=left_is_a, status="done"
            )
            session.add(assignment)
            session.add(Judgment(assignment=assignment, criterion=criterion, **answer))
            return assignment

        rating_tasks = {(c, s): task("rating", c, s) for c in ("c1", "c2") for s in systems}
        for (annotator, c, s), rating in RATINGS.items():
            first = 1 if (annotator, c, s) == ("ann1", "c1", "alpha") else rating
            assignment = judge(rating_tasks[(c, s)], annotator, "relevance", rating=first)
            if first != rating:
                session.add(
                    Judgment(
                        assignment=assignment, criterion="relevance", rating=rating, revision=1
                    )
                )
        for key in rating_tasks:
            judge(rating_tasks[key], "spammer", "relevance", rating=1)
        gold = task("rating", "gold", "alpha", gold={"relevance": 1})
        judge(gold, "ann1", "relevance", rating=1)

        # Pairwise: alpha (A) vs gamma (B). Choices are in task terms whatever the screen side.
        for context, choices in [("c1", ["A", "A", "tie"]), ("c2", ["A", "B", "A"])]:
            pair = task("pairwise", context, "alpha", "gamma")
            for annotator, choice in zip(["ann1", "ann2", "ann3"], choices, strict=True):
                judge(pair, annotator, "overall", left_is_a=annotator != "ann2", choice=choice)
            judge(pair, "spammer", "overall", choice="B", reason="fast")


def _frame(rows: list[dict]) -> pd.DataFrame:
    """An in-memory judgments frame with only the columns the statistics read."""
    frame = pd.DataFrame(rows)
    for column in ("rating", "choice", "system", "system_a", "system_b"):
        if column not in frame:
            frame[column] = None
    frame["rating"] = frame["rating"].astype("Int64")
    return frame


def _ratings_frame(matrix: np.ndarray, criterion: str = "quality") -> pd.DataFrame:
    """Rating judgments from a (tasks × raters) matrix; NaN = not rated."""
    tasks, raters = np.nonzero(~np.isnan(matrix))
    return _frame(
        [
            {
                "task_id": t,
                "annotator": f"r{r}",
                "criterion": criterion,
                "rating": int(matrix[t, r]),
            }
            for t, r in zip(tasks, raters, strict=True)
        ]
    ).assign(kind="rating", system="s")


# --- loading --------------------------------------------------------------------------------


def test_judgments_frame_counts_latest_revision_and_drops_excluded_and_gold(engine) -> None:
    frame = judgments_frame(engine, "study")
    assert list(frame.columns) == FRAME_COLUMNS
    # 12 ratings + 6 pairwise choices of ann1-3; no spammer, no gold task.
    assert len(frame) == 18
    assert set(frame["annotator"]) == {"ann1", "ann2", "ann3"}
    assert not frame["is_gold"].any() and not frame["excluded"].any()
    edited = frame.query(
        "annotator == 'ann1' and context_external_id == 'c1' and system == 'alpha'"
    )
    assert edited[["rating", "revision"]].values.tolist() == [[4, 1]]
    # Systems are labelled name@version; rating tasks fill `system`, pairwise ones system_a/b.
    assert set(frame["system"].dropna()) == {"alpha", "gamma@v2"}
    pairs = frame[frame["kind"] == "pairwise"]
    assert pairs["system"].isna().all()
    assert set(zip(pairs["system_a"], pairs["system_b"], strict=True)) == {("alpha", "gamma@v2")}
    # ann2 saw response A on the right; the choice stays in task terms.
    ann2 = pairs[pairs["annotator"] == "ann2"].sort_values("context_external_id")
    assert ann2["choice"].tolist() == ["A", "B"] and not ann2["left_is_a"].any()
    assert frame["submitted_at"].dt.tz is not None
    assert frame.attrs["dropped"] == {
        "excluded_annotators": 6,
        "gold_tasks": 1,
        "not_applicable": 0,
    }

    everyone = judgments_frame(engine, "study", include_excluded=True, include_gold=True)
    assert len(everyone) == 18 + 6 + 1
    assert everyone.loc[everyone["is_gold"], "annotator"].tolist() == ["ann1"]
    assert everyone.loc[everyone["excluded"], "annotator"].unique().tolist() == ["spammer"]


def test_unknown_campaign_names_the_existing_ones(engine, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="'study'"):
        judgments_frame(engine, "stduy")
    with pytest.raises(LookupError, match="'study'"):
        export_campaign(engine, "stduy", tmp_path / "out")


# --- summaries ------------------------------------------------------------------------------


def test_rating_summary_matches_numpy_and_a_scipy_bootstrap() -> None:
    rng = np.random.default_rng(7)
    values = {"alpha": rng.integers(1, 6, 40), "beta": rng.integers(2, 6, 25)}
    frame = _frame(
        [
            {"criterion": "fluency", "rating": int(v), "system": system}
            for system, ratings in values.items()
            for v in ratings
        ]
    )
    summary = rating_summary(frame, n_boot=20_000, seed=1).set_index("system")
    for system, ratings in values.items():
        row = summary.loc[system]
        assert row["n"] == len(ratings)
        assert row["mean"] == pytest.approx(ratings.mean())
        assert row["std"] == pytest.approx(ratings.std(ddof=1))
        reference = bootstrap(
            (ratings,), np.mean, n_resamples=20_000, method="percentile", random_state=2
        ).confidence_interval
        # Two Monte Carlo estimates of the same quantiles: equal up to resampling noise.
        assert row["ci_low"] == pytest.approx(reference.low, abs=0.03)
        assert row["ci_high"] == pytest.approx(reference.high, abs=0.03)
    # Same seed, same interval.
    assert rating_summary(frame, n_boot=500, seed=3).equals(
        rating_summary(frame, n_boot=500, seed=3)
    )


def test_pairwise_summary_counts_orients_and_tests_a_hand_worked_case() -> None:
    # alpha beats beta 9 times and loses once, with 2 ties. Half the judgments list beta as A.
    outcomes = ["alpha"] * 9 + ["beta"] + ["tie"] * 2
    rows = []
    for i, winner in enumerate(outcomes):
        a, b = ("alpha", "beta") if i % 2 else ("beta", "alpha")
        choice = "tie" if winner == "tie" else ("A" if winner == a else "B")
        rows.append({"criterion": "overall", "choice": choice, "system_a": a, "system_b": b})
    summary = pairwise_summary(_frame(rows))
    row = summary.iloc[0]
    assert (row["system_1"], row["system_2"]) == ("alpha", "beta")
    assert (row["wins"], row["ties"], row["losses"], row["n"]) == (9, 2, 1, 12)
    assert row["win_rate"] == pytest.approx(9 / 12)
    # Two-sided sign test on the 10 decided comparisons: P(X <= 1) + P(X >= 9) for X ~ Bin(10, 1/2)
    # = 2 * (1 + 10) / 2**10 = 22 / 1024.
    assert row["p_value"] == pytest.approx(22 / 1024, rel=1e-12)
    assert row["p_holm"] == pytest.approx(22 / 1024)  # a single pair: nothing to adjust


def test_pairwise_ratings_alone_with_arena_votes_and_combined(engine) -> None:
    frame = judgments_frame(engine, "study")
    alone = pairwise_ratings(frame, n_boot=50)
    assert alone["source"].unique().tolist() == ["judgments"]
    assert alone["system"].tolist() == ["alpha", "gamma@v2"]  # alpha won 4 of 6, tied 1
    assert (alone["ci_low"] <= alone["rating"]).all() and (
        alone["rating"] <= alone["ci_high"]
    ).all()
    arena = [("alpha", "gamma@v2", "B")] * 3 + [("alpha", "popularity", "A")]
    separate = pairwise_ratings(frame, arena, n_boot=50)
    assert separate.groupby("source")["battles"].sum().to_dict() == {"arena": 8, "judgments": 12}
    combined = pairwise_ratings(frame, arena, combine=True, n_boot=50)
    assert set(combined["source"]) == {"judgments+arena"}
    assert set(combined["system"]) == {"alpha", "gamma@v2", "popularity"}
    with pytest.raises(ValueError, match="needs `arena_votes`"):
        pairwise_ratings(frame, combine=True)
    with pytest.raises(ValueError, match="'fluency'.*overall"):
        pairwise_ratings(frame, criterion="fluency")


# --- agreement ------------------------------------------------------------------------------


def test_krippendorff_alpha_matches_a_hand_worked_case_and_the_package() -> None:
    # Nominal alpha, 2 raters x 4 tasks: (A,A), (A,B), (B,B), (B,B).
    # Coincidences (each unit of 2 values adds both ordered pairs): o_AA = 2, o_AB = o_BA = 1,
    # o_BB = 4; n_A = 3, n_B = 5, n = 8. alpha = 1 - (n - 1) * (o_AB + o_BA) / (2 * n_A * n_B)
    # = 1 - 7 * 2 / 30 = 8 / 15.
    rows = [
        {"task_id": t, "annotator": rater, "criterion": "overall", "choice": choice}
        for t, pair in enumerate([("A", "A"), ("A", "B"), ("B", "B"), ("B", "B")])
        for rater, choice in zip(["x", "y"], pair, strict=True)
    ]
    result = agreement(_frame(rows)).iloc[0]
    assert result["alpha_level"] == "nominal" and result["kind"] == "pairwise"
    assert result["krippendorff_alpha"] == pytest.approx(8 / 15)
    assert np.isnan(result["kendall_w"])

    # Ordinal alpha with missing ratings, against krippendorff.alpha on the (raters, units) matrix.
    rng = np.random.default_rng(0)
    matrix = rng.integers(1, 6, (30, 4)).astype(float)  # (tasks, raters)
    matrix[rng.random(matrix.shape) < 0.25] = np.nan
    expected = krippendorff.alpha(reliability_data=matrix.T, level_of_measurement="ordinal")
    result = agreement(_ratings_frame(matrix)).iloc[0]
    assert result["krippendorff_alpha"] == pytest.approx(expected)
    assert result["n_raters"] == 4
    assert result["n_items"] == int((np.isfinite(matrix).sum(axis=1) >= 2).sum())


def test_interval_alpha_matches_the_package_and_is_nan_for_pairwise() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.integers(1, 6, (40, 3)).astype(float)  # (tasks, raters)
    matrix[:, 1] = np.clip(matrix[:, 0] + rng.integers(-1, 2, 40), 1, 5)  # some agreement
    matrix[rng.random(matrix.shape) < 0.2] = np.nan
    result = agreement(_ratings_frame(matrix), n_boot=0).iloc[0]
    for column, level in [
        ("krippendorff_alpha", "ordinal"),
        ("krippendorff_alpha_interval", "interval"),
    ]:
        expected = krippendorff.alpha(reliability_data=matrix.T, level_of_measurement=level)
        assert result[column] == pytest.approx(expected)
    assert result["alpha_level"] == "ordinal"  # the headline alpha keeps its level
    assert np.isnan(result["alpha_ci_low"]) and np.isnan(result["alpha_ci_high"])  # n_boot=0

    choices = [
        {"task_id": t, "annotator": rater, "criterion": "overall", "choice": choice}
        for t, pair in enumerate([("A", "B"), ("A", "A"), ("tie", "B")])
        for rater, choice in zip(["x", "y"], pair, strict=True)
    ]
    pairwise = agreement(_frame(choices)).iloc[0]
    assert np.isnan(pairwise["krippendorff_alpha_interval"])
    assert np.isnan(pairwise["kendall_w_uncorrected"]) and pairwise["kendall_complete_tasks"] == 0


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_vectorised_alpha_equals_the_package_on_bootstrap_resamples(level: str) -> None:
    # The bootstrap recomputes alpha from weighted sums of per-task coincidence matrices; a
    # resample with task weights w must give the package's alpha on the tasks repeated w times.
    rng = np.random.default_rng(2)
    values = np.array([1.0, 2.0, 4.0, 5.0])  # uneven gaps: interval distances need real values
    counts = rng.integers(0, 3, (25, len(values)))
    counts = counts[counts.sum(axis=1) >= 2]
    units = _unit_coincidences(counts.astype(float))
    for weights in [
        np.ones(len(counts), dtype=int),
        *rng.multinomial(len(counts), [1 / len(counts)] * len(counts), 3),
    ]:
        mine = _alpha_from_coincidences(np.tensordot(weights, units, axes=1), level, values)
        expected = krippendorff.alpha(
            value_counts=np.repeat(counts, weights, axis=0),
            value_domain=values,
            level_of_measurement=level,
        )
        assert float(mine) == pytest.approx(expected, abs=1e-12)


def test_alpha_bootstrap_interval_matches_a_slow_reference_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(1, 6, 60)
    matrix = np.clip(truth[:, None] + rng.integers(-1, 2, (60, 3)), 1, 5).astype(float)
    matrix[rng.random(matrix.shape) < 0.15] = np.nan
    frame = _ratings_frame(matrix)
    result = agreement(frame, n_boot=4000, seed=11).iloc[0]
    assert result["alpha_ci_low"] < result["krippendorff_alpha"] < result["alpha_ci_high"]

    # Reference: resample tasks with replacement and call the package on each resample.
    pairable = matrix[np.isfinite(matrix).sum(axis=1) >= 2]
    draws = np.random.default_rng(12).integers(0, len(pairable), (1000, len(pairable)))
    alphas = [
        krippendorff.alpha(reliability_data=pairable[rows].T, level_of_measurement="ordinal")
        for rows in draws
    ]
    low, high = np.quantile(alphas, [0.025, 0.975])
    # Two Monte Carlo estimates of the same quantiles: equal up to resampling noise.
    assert result["alpha_ci_low"] == pytest.approx(low, abs=0.03)
    assert result["alpha_ci_high"] == pytest.approx(high, abs=0.03)

    again = agreement(frame, n_boot=4000, seed=11).iloc[0]
    assert (again["alpha_ci_low"], again["alpha_ci_high"]) == (
        result["alpha_ci_low"],
        result["alpha_ci_high"],
    )
    with pytest.raises(ValueError, match="n_boot"):
        agreement(frame, n_boot=-1)


def test_annotator_agreement_hand_worked_case() -> None:
    # r2 disagrees: r0 and r1 rate tasks 0-2 alike, r2 differs on tasks 0 and 1; task 3 is r0's
    # alone.
    ratings = {
        (0, "r0"): 1, (0, "r1"): 1, (0, "r2"): 5,
        (1, "r0"): 2, (1, "r1"): 2, (1, "r2"): 4,
        (2, "r0"): 3, (2, "r1"): 3, (2, "r2"): 3,
        (3, "r0"): 4,
    }  # fmt: skip
    rows = [
        {"task_id": t, "annotator": a, "criterion": "quality", "rating": r, "system": "s"}
        for (t, a), r in ratings.items()
    ]
    rows += [
        {"task_id": 10 + t, "annotator": a, "criterion": "overall", "choice": c}
        for t, answers in enumerate([("A", "A", "B"), ("B", "B", "B")])
        for a, c in zip(["r0", "r1", "r2"], answers, strict=True)
    ]
    table = annotator_agreement(_frame(rows))
    quality = table[table["criterion"] == "quality"].set_index("annotator")
    assert quality.index[0] == "r2"  # the one who disagrees most comes first
    # r2 against the others: (1, 1) vs 5, (2, 2) vs 4, (3, 3) vs 3.
    r2 = quality.loc["r2"]
    assert (r2["n_judgments"], r2["n_shared"], r2["majority_tasks"]) == (3, 3, 3)
    assert r2["agreement_with_others"] == pytest.approx(1 / 3)
    assert r2["agreement_with_majority"] == pytest.approx(1 / 3)
    assert r2["mean_abs_diff"] == pytest.approx((4 + 2 + 0) / 3)
    # r0: the others are (1, 5), (2, 4) -- no majority -- and (3, 3); task 3 is not shared.
    r0 = quality.loc["r0"]
    assert (r0["n_judgments"], r0["n_shared"], r0["majority_tasks"]) == (4, 3, 1)
    assert r0["agreement_with_others"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert r0["agreement_with_majority"] == pytest.approx(1.0)
    assert r0["mean_abs_diff"] == pytest.approx((2 + 1 + 0) / 3)
    # Leave-one-out alpha against the package: without r2, r0 and r1 agree perfectly.
    everyone = np.array([[1, 2, 3, 4], [1, 2, 3, np.nan], [5, 4, 3, np.nan]])  # (raters, tasks)
    alpha = krippendorff.alpha(reliability_data=everyone, level_of_measurement="ordinal")
    assert r2["krippendorff_alpha"] == pytest.approx(alpha)
    assert r2["alpha_without"] == pytest.approx(1.0)
    assert r2["alpha_delta"] == pytest.approx(1.0 - alpha)
    without_r0 = krippendorff.alpha(reliability_data=everyone[1:], level_of_measurement="ordinal")
    assert r0["alpha_without"] == pytest.approx(without_r0)

    overall = table[table["criterion"] == "overall"].set_index("annotator")
    assert overall.index[0] == "r2" and overall["alpha_level"].eq("nominal").all()
    assert overall["mean_abs_diff"].isna().all()
    assert overall.loc["r2", "agreement_with_others"] == pytest.approx((0 + 1) / 2)
    assert annotator_agreement(_frame(rows)[:0]).empty


# Fleiss (1971) / Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories;
# row i gives how many raters put subject i in each category. kappa = (0.378 - 0.213) / (1 - 0.213)
# = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_the_worked_example_and_drops_other_rater_counts() -> None:
    rows = [
        {
            "task_id": t,
            "annotator": f"r{k}",
            "criterion": "quality",
            "rating": rating,
            "system": "s",
        }
        for t, counts in enumerate(FLEISS_TABLE)
        for k, rating in enumerate(
            r for category, n in enumerate(counts, 1) for r in [category] * n
        )
    ]
    # A task with only 2 judgments: Fleiss' kappa needs 14 per task, so it is left out.
    rows += [
        {"task_id": 99, "annotator": f"r{k}", "criterion": "quality", "rating": 1, "system": "s"}
        for k in range(2)
    ]
    result = agreement(_frame(rows)).iloc[0]
    assert result["fleiss_kappa"] == pytest.approx(0.2099, abs=5e-5)
    assert (result["fleiss_tasks"], result["fleiss_raters_per_task"]) == (10, 14)
    assert result["n_items"] == 11


def test_kendall_w_hand_worked_cases() -> None:
    # 3 raters rank 4 items identically: complete concordance.
    identical = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]])
    assert kendall_w(identical).w == pytest.approx(1.0)
    # 3 items (rows) x 3 raters (columns), no ties: ranks (1,2,3), (1,3,2), (2,1,3) per rater.
    # Rank sums R = (4, 6, 8), mean 6, S = 4 + 0 + 4 = 8; W = 12 S / (m^2 (n^3 - n))
    # = 96 / (9 * 24) = 4/9.
    no_ties = np.array([[1, 1, 2], [2, 3, 1], [3, 2, 3]])
    assert kendall_w(no_ties).w == pytest.approx(4 / 9)
    assert kendall_w(no_ties, tie_correction=False).w == pytest.approx(4 / 9)  # nothing to correct
    # Scores with a tie: rater 2 gives items 2 and 3 the same score -> ranks (1, 2.5, 2.5), one tie
    # group of t = 2, T = 2^3 - 2 = 6. R = (1+1+2, 2+2.5+1, 3+2.5+3) = (4, 5.5, 8.5), S = 4 + 0.25
    # + 6.25 = 10.5; W = 12 * 10.5 / (9 * 24 - 3 * 6) = 126 / 198 = 7/11.
    ties = np.array([[1, 1, 2], [2, 3, 1], [3, 3, 3]])
    result = kendall_w(ties)
    assert result.w == pytest.approx(7 / 11)
    assert result.chi2 == pytest.approx(3 * 2 * 7 / 11) and result.df == 2  # m (n - 1) W
    assert np.isnan(kendall_w(np.ones((4, 3))).w)  # nothing ranked: undefined
    # Without the tie correction, the textbook 12 S / (m^2 (n^3 - n)) = 126 / 216 = 7/12.
    assert kendall_w(ties, tie_correction=False).w == pytest.approx(7 / 12)

    # Through agreement(): a fully crossed design is one block, W as above, and every task is
    # complete.
    crossed = agreement(_ratings_frame(ties.astype(float))).iloc[0]
    assert crossed["kendall_w"] == pytest.approx(7 / 11)
    assert crossed["kendall_w_uncorrected"] == pytest.approx(7 / 12)
    assert (crossed["kendall_blocks"], crossed["kendall_tasks"]) == (1, 3)
    assert crossed["kendall_w_complete"] == pytest.approx(7 / 11)
    assert crossed["kendall_complete_tasks"] == 3
    assert crossed["kendall_complete_p"] == pytest.approx(crossed["kendall_p"])


def test_kendall_w_on_an_overlapping_design_weights_blocks_by_tasks() -> None:
    # Tasks 0-2 rated by raters 0-2 (the 7/11 case), tasks 3-6 by raters 3-5 identically (W = 1).
    matrix = np.full((7, 6), np.nan)
    matrix[:3, :3] = [[1, 1, 2], [2, 3, 1], [3, 3, 3]]
    matrix[3:, 3:] = [[1, 1, 1], [2, 2, 2], [4, 4, 4], [5, 5, 5]]
    result = agreement(_ratings_frame(matrix)).iloc[0]
    assert result["kendall_blocks"] == 2 and result["kendall_tasks"] == 7
    assert result["kendall_w"] == pytest.approx((3 * 7 / 11 + 4 * 1.0) / 7)
    assert result["kendall_w_uncorrected"] == pytest.approx((3 * 7 / 12 + 4 * 1.0) / 7)
    assert result["kendall_df"] == 2 + 3
    # No task was rated by all six raters: nothing complete to compute W on.
    assert result["kendall_complete_tasks"] == 0 and np.isnan(result["kendall_w_complete"])


def test_kendall_w_complete_uses_the_tasks_every_rater_rated() -> None:
    # Raters 0-3 all rate tasks 0-4; tasks 5-6 miss rater 3 (a second block of 2 tasks).
    rng = np.random.default_rng(5)
    matrix = rng.integers(1, 6, (7, 4)).astype(float)
    matrix[5:, 3] = np.nan
    result = agreement(_ratings_frame(matrix)).iloc[0]
    expected = kendall_w(matrix[:5])
    assert result["kendall_complete_tasks"] == 5
    assert result["kendall_w_complete"] == pytest.approx(expected.w)
    assert result["kendall_complete_p"] == pytest.approx(expected.p_value)
    assert result["kendall_blocks"] == 2 and result["kendall_tasks"] == 7


# --- presentation and export ----------------------------------------------------------------


def test_paper_table_markdown_and_latex(engine) -> None:
    frame = judgments_frame(engine, "study")
    markdown = paper_table(frame)
    lines = markdown.splitlines()
    assert lines[0] == "| system | relevance |"
    # alpha: (4+5+4+3+4+5)/6 = 25/6; gamma: (2+3+2+1+2+1)/6 = 11/6.
    assert lines[2] == "| alpha | **4.1667** |" and lines[3] == "| gamma@v2 | 1.8333 |"
    grouped = paper_table(frame, "latex", by="context_source", digits=2)
    assert (
        r"\multicolumn{1}{c}{inspired} & \multicolumn{1}{c}{redial} & \multicolumn{1}{c}{All}"
        in grouped
    )
    assert r"alpha & \textbf{4.00} & \textbf{4.33} & \textbf{4.17} \\" in grouped
    with pytest.raises(ValueError, match="no rating judgments"):
        paper_table(frame[frame["kind"] == "pairwise"])


def test_figures_have_score_distributions_and_a_win_rate_heatmap(engine) -> None:
    result = figures(judgments_frame(engine, "study"))
    assert set(result) == {"scores", "win_rate_overall"}
    assert {trace.name for trace in result["scores"].data} == {"alpha", "gamma@v2"}
    heatmap = result["win_rate_overall"].data[0]
    # alpha took 4 wins + half a tie of 6 comparisons from gamma.
    assert heatmap.z[0][1] == pytest.approx(4.5 / 6)


def test_export_writes_every_file_and_parquet_round_trips(engine, tmp_path: Path) -> None:
    out = tmp_path / "export"
    written = export_campaign(engine, "study", out, n_boot=50)
    tables = [
        "judgments",
        "judgments_wide_pairwise",
        "judgments_wide_rating",
        "rating_summary",
        "pairwise_summary",
        "pairwise_ratings",
        "agreement",
        "annotator_agreement",
        "time_on_task",
    ]
    expected = {f"{name}.{fmt}" for name in tables for fmt in ("csv", "json", "parquet")} | {
        "paper_table.md",
        "paper_table.tex",
        "figure_scores.html",
        "figure_win_rate_overall.html",
        "plotly.min.js",
        "metrics.json",
    }
    assert {path.name for path in written} == expected
    assert all(path.parent == out and path.stat().st_size > 0 for path in written)

    frame = judgments_frame(engine, "study")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "judgments.parquet"), frame)
    assert len(pd.read_csv(out / "judgments.csv")) == len(
        json.loads((out / "judgments.json").read_text())
    )

    wide = pd.read_parquet(out / "judgments_wide_rating.parquet")
    task_columns = ["task_id", "criterion", "context_source", "context_external_id", "system"]
    assert list(wide.columns) == [*task_columns, "ann1", "ann2", "ann3"]
    assert len(wide) == 4  # 4 rating tasks x 1 criterion
    assert wide.equals(wide_frame(frame, "rating"))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"] == {"judgments": 18, "tasks": 6, "annotators": 3, "systems": 2}
    assert metrics["dropped_judgments"] == {
        "excluded_annotators": 6,
        "gold_tasks": 1,
        "not_applicable": 0,
    }
    assert [row["criterion"] for row in metrics["agreement"]] == ["relevance", "overall"]
    assert {row["annotator"] for row in metrics["annotator_agreement"]} == {"ann1", "ann2", "ann3"}
    assert pd.read_csv(out / "agreement.csv")["alpha_ci_low"].notna().all()  # n_boot reached it
    html = (out / "figure_scores.html").read_text()
    # The only script loaded is the local copy of plotly.js: the page works offline.
    assert re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) == ["plotly.min.js"]
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    with pytest.raises(ValueError, match="xlsx"):
        export_campaign(engine, "study", out, formats=("xlsx",))
