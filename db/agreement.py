"""Inter-annotator agreement of a campaign's judgments: Krippendorff's alpha, Fleiss' kappa, Kendall's W.

The unit of analysis is the task: for a rating criterion, one system response rated by several
annotators (a task × annotator matrix); for a pairwise criterion, one pair of responses, the
annotators' choices in task terms ("A" = ``response_a``, whatever side it was shown on).

* **Krippendorff's alpha** (``krippendorff.alpha``) uses every task with two or more judgments and
  copes with any pattern of missing judgments: ordinal for rating criteria, nominal for pairwise.
* **Fleiss' kappa** (``statsmodels``) needs the same number of raters per task. It is computed on
  the tasks with the most common number of judgments (``fleiss_raters_per_task``, the larger one
  when two counts are equally common); tasks with other counts are left out and
  ``fleiss_tasks`` says how many were used. Rating values are treated as nominal categories.
* **Kendall's W** (rating criteria only, as LLM-REDIAL §4.1 reports it) needs every rater to rank
  the same tasks; see ``kendall_w`` for the formula and ``agreement`` for overlapping designs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import krippendorff
import numpy as np
import pandas as pd
from scipy.stats import chi2, rankdata
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

AGREEMENT_COLUMNS = [
    "criterion",
    "kind",
    "n_items",
    "n_raters",
    "n_judgments",
    "krippendorff_alpha",
    "alpha_level",
    "fleiss_kappa",
    "fleiss_tasks",
    "fleiss_raters_per_task",
    "kendall_w",
    "kendall_chi2",
    "kendall_df",
    "kendall_p",
    "kendall_tasks",
    "kendall_blocks",
]


class KendallW(NamedTuple):
    """Kendall's W with its chi-square test: ``chi2 = m (n - 1) W`` on ``df = n - 1``."""

    w: float
    chi2: float
    df: int
    p_value: float


def kendall_w(scores: np.ndarray) -> KendallW:
    """Kendall's coefficient of concordance for an ``(n items, m raters)`` matrix without gaps.

    Each rater's scores are turned into ranks over the items (``scipy.stats.rankdata``, tied
    scores share their average rank). With ``R_i`` the rank sum of item i and ``S = sum_i (R_i -
    mean(R))^2``::

        W = 12 S / (m^2 (n^3 - n) - m sum_j T_j),   T_j = sum over tie groups of rater j of (t^3 - t)

    where t is the size of a tie group. W is 1 when all raters rank the items alike and 0 when
    the rank sums are all equal. The test statistic ``m (n - 1) W`` is approximately chi-square
    with ``n - 1`` degrees of freedom (the test LLM-REDIAL reports). W is NaN when it is undefined:
    fewer than 2 items or raters, or every rater gave every item the same score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or np.isnan(scores).any():
        raise ValueError(
            f"kendall_w needs an (items, raters) matrix without missing scores; got shape "
            f"{scores.shape} with {int(np.isnan(scores).sum())} NaN; drop incomplete items first"
        )
    n, m = scores.shape
    if n < 2 or m < 2:
        return KendallW(float("nan"), float("nan"), max(n - 1, 0), float("nan"))
    ranks = rankdata(scores, axis=0)  # average ranks per rater (column)
    rank_sums = ranks.sum(axis=1)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    ties = sum(float((counts**3 - counts).sum()) for counts in _tie_counts(scores))
    denominator = m**2 * (n**3 - n) - m * ties
    if denominator <= 0:  # every rater tied every item: no ranking to agree on
        return KendallW(float("nan"), float("nan"), n - 1, float("nan"))
    w = 12.0 * s / denominator
    statistic = m * (n - 1) * w
    return KendallW(w, statistic, n - 1, float(chi2.sf(statistic, n - 1)))


def _tie_counts(scores: np.ndarray) -> list[np.ndarray]:
    """Per rater (column), the sizes of its groups of equal scores."""
    return [np.unique(column, return_counts=True)[1] for column in scores.T]


def _answers(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """``(task_id, annotator, value)`` rows of one criterion's judgments, and the criterion's kind.

    A criterion whose judgments carry ratings is a rating criterion; otherwise it is pairwise.
    """
    if frame["rating"].notna().any():
        values = frame["rating"].astype("float64")
        kind = "rating"
    else:
        values = frame["choice"]
        kind = "pairwise"
    answers = pd.DataFrame(
        {"task_id": frame["task_id"], "annotator": frame["annotator"], "value": values}
    )
    return answers.dropna(subset=["value"]), kind


def _krippendorff(counts: pd.DataFrame, kind: str) -> float:
    """Alpha from a (tasks × values) count table; NaN when fewer than two values ever occur."""
    pairable = counts[counts.sum(axis=1) >= 2]
    if (pairable.sum(axis=0) > 0).sum() < 2:
        return float("nan")
    level = "ordinal" if kind == "rating" else "nominal"
    return float(krippendorff.alpha(value_counts=pairable.to_numpy(), level_of_measurement=level))


def _fleiss(answers: pd.DataFrame) -> tuple[float, int, int]:
    """``(kappa, tasks used, raters per task)`` on the tasks with the most common rater count."""
    per_task = answers.groupby("task_id")["value"].size()
    per_task = per_task[per_task >= 2]
    if per_task.empty:
        return float("nan"), 0, 0
    frequency = per_task.value_counts()
    k = int(frequency[frequency == frequency.max()].index.max())
    used = answers[answers["task_id"].isin(per_task.index[per_task == k])]
    # One row per task, its k answers side by side (raters are interchangeable in Fleiss' kappa).
    codes = pd.factorize(used["value"], sort=True)[0]
    matrix = codes[np.argsort(used["task_id"].to_numpy(), kind="stable")].reshape(-1, k)
    table, _ = aggregate_raters(matrix)
    if table.shape[1] < 2:  # a single category everywhere: chance agreement is 1, kappa undefined
        return float("nan"), len(matrix), k
    return float(fleiss_kappa(table, method="fleiss")), len(matrix), k


def _kendall_blocks(answers: pd.DataFrame) -> tuple[KendallW, int, int]:
    """Kendall's W over the complete blocks of an overlapping design.

    Tasks are grouped by the exact set of annotators who rated them; each group with at least two
    tasks and two annotators is a complete (tasks × annotators) matrix. Returns the task-weighted
    mean W over blocks, with the blocks' chi-square statistics and degrees of freedom summed
    (independent blocks), the number of tasks used and the number of blocks.
    """
    matrix = answers.pivot_table(index="task_id", columns="annotator", values="value")
    values = matrix.to_numpy()
    # One block per distinct pattern of present annotators.
    patterns, block_of_task = np.unique(~np.isnan(values), axis=0, return_inverse=True)
    block_of_task = block_of_task.ravel()
    weighted_w = statistic = 0.0
    dof = n_tasks = n_blocks = 0
    for block, raters in enumerate(patterns):
        tasks = block_of_task == block
        if raters.sum() < 2 or tasks.sum() < 2:
            continue
        result = kendall_w(values[np.ix_(tasks, raters)])
        if np.isnan(result.w):
            continue
        weighted_w += result.w * tasks.sum()
        statistic += result.chi2
        dof += result.df
        n_tasks += int(tasks.sum())
        n_blocks += 1
    if n_blocks == 0:
        return KendallW(float("nan"), float("nan"), 0, float("nan")), 0, 0
    combined = KendallW(weighted_w / n_tasks, statistic, dof, float(chi2.sf(statistic, dof)))
    return combined, n_tasks, n_blocks


def agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Agreement per criterion of a ``judgments_frame``: one row per criterion.

    Columns: ``n_items`` (tasks with two or more judgments, the units that can agree),
    ``n_raters`` (distinct annotators), ``n_judgments``, ``krippendorff_alpha`` and its
    ``alpha_level``, ``fleiss_kappa`` with ``fleiss_tasks`` / ``fleiss_raters_per_task`` (see the
    module docstring for tasks with other rater counts), and for rating criteria ``kendall_w``,
    ``kendall_chi2``, ``kendall_df``, ``kendall_p``, ``kendall_tasks``, ``kendall_blocks``.

    Kendall's W needs every rater to score the same tasks. In a fully crossed study (every
    annotator rates every task, as in LLM-REDIAL) that is one block and W is the textbook value.
    In an overlapping design (``overlap`` annotators per task) tasks are grouped by their set of
    annotators; W is the task-weighted mean over the groups with at least two tasks, and the
    chi-square test sums the groups' statistics and degrees of freedom. Pairwise criteria get NaN:
    A/B/tie choices are not scores to rank.
    """
    present = set(df["criterion"])
    declared = [c["name"] for c in df.attrs.get("criteria", []) if c.get("name") in present]
    rows: list[dict[str, Any]] = []
    for criterion in declared + sorted(present - set(declared)):  # the campaign's order first
        frame = df[df["criterion"] == criterion]
        answers, kind = _answers(frame)
        counts = pd.crosstab(answers["task_id"], answers["value"])
        kappa, fleiss_tasks, fleiss_k = _fleiss(answers)
        row: dict[str, Any] = {
            "criterion": criterion,
            "kind": kind,
            "n_items": int((counts.sum(axis=1) >= 2).sum()),
            "n_raters": int(answers["annotator"].nunique()),
            "n_judgments": len(answers),
            "krippendorff_alpha": _krippendorff(counts, kind),
            "alpha_level": "ordinal" if kind == "rating" else "nominal",
            "fleiss_kappa": kappa,
            "fleiss_tasks": fleiss_tasks,
            "fleiss_raters_per_task": fleiss_k,
        }
        if kind == "rating":
            w, kendall_tasks, blocks = _kendall_blocks(answers)
        else:
            w, kendall_tasks, blocks = KendallW(np.nan, np.nan, 0, np.nan), 0, 0
        row |= {
            "kendall_w": w.w,
            "kendall_chi2": w.chi2,
            "kendall_df": w.df,
            "kendall_p": w.p_value,
            "kendall_tasks": kendall_tasks,
            "kendall_blocks": blocks,
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
