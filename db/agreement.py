"""Inter-annotator agreement of a campaign's judgments: Krippendorff's alpha, Fleiss' kappa, Kendall's W.

The unit of analysis is the task: for a rating criterion, one system response rated by several
annotators (a task × annotator matrix); for a pairwise criterion, one pair of responses, the
annotators' choices in task terms ("A" = ``response_a``, whatever side it was shown on).

* **Krippendorff's alpha** (``krippendorff.alpha``) uses every task with two or more judgments and
  copes with any pattern of missing judgments: ordinal for rating criteria, nominal for pairwise
  (``krippendorff_alpha`` with its ``alpha_level``). Rating criteria also get the interval alpha
  (``krippendorff_alpha_interval``: squared differences of the scores), NaN for pairwise ones.
* **A bootstrap interval for alpha** (``alpha_ci_low`` / ``alpha_ci_high``, for the alpha of
  ``alpha_level``): the tasks with two or more judgments are resampled with replacement
  ``n_boot`` times (seeded); alpha is recomputed on each resample and the interval is the
  percentile interval of those alphas. Resamples where alpha is undefined (one value only) are
  left out. Tasks, not single judgments, are resampled, so the judgments of one task stay
  together.
* **Fleiss' kappa** (``statsmodels``) needs the same number of raters per task. It is computed on
  the tasks with the most common number of judgments (``fleiss_raters_per_task``, the larger one
  when two counts are equally common); tasks with other counts are left out and
  ``fleiss_tasks`` says how many were used. Rating values are treated as nominal categories.
* **Kendall's W** (rating criteria only, as LLM-REDIAL §4.1 reports it) needs every rater to rank
  the same tasks; see ``kendall_w`` for the formula. Two readings of an incomplete design are
  reported:

  - ``kendall_w`` (tie-corrected) and ``kendall_w_uncorrected`` (the textbook
    ``12 S / (m^2 (n^3 - n))``): tasks are grouped into blocks by the exact set of annotators who
    rated them; every block with at least two tasks and two annotators is a complete matrix, and
    W is the task-weighted mean over blocks (``kendall_tasks``, ``kendall_blocks``); the
    chi-square test (``kendall_chi2``, ``kendall_df``, ``kendall_p``) sums the blocks'.
  - ``kendall_w_complete`` (tie-corrected) with ``kendall_complete_p``: one matrix of the
    ``kendall_complete_tasks`` tasks that **every** annotator of the criterion rated (listwise
    deletion of the other tasks, as a complete-case analysis does). In a fully crossed study it
    equals ``kendall_w``; in an overlapping design no task may qualify and it is NaN with 0 tasks.

``annotator_agreement`` looks at the annotators one by one: how often each agrees with the others
on the tasks they share (exact matches, the others' majority answer, distance from the others'
mean rating) and how much alpha changes when they are left out; its docstring defines each column.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

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
    "alpha_ci_low",
    "alpha_ci_high",
    "krippendorff_alpha_interval",
    "fleiss_kappa",
    "fleiss_tasks",
    "fleiss_raters_per_task",
    "kendall_w",
    "kendall_w_uncorrected",
    "kendall_chi2",
    "kendall_df",
    "kendall_p",
    "kendall_tasks",
    "kendall_blocks",
    "kendall_w_complete",
    "kendall_complete_p",
    "kendall_complete_tasks",
]

ANNOTATOR_AGREEMENT_COLUMNS = [
    "criterion",
    "kind",
    "annotator",
    "n_judgments",
    "n_shared",
    "agreement_with_others",
    "majority_tasks",
    "agreement_with_majority",
    "mean_abs_diff",
    "alpha_level",
    "krippendorff_alpha",
    "alpha_without",
    "alpha_delta",
]

Level = Literal["nominal", "ordinal", "interval"]

# Bootstrap weights are drawn in chunks of at most this many (resample, task) cells, so memory
# stays bounded on campaigns with many tasks.
_BOOT_CHUNK_CELLS = 2_000_000


class KendallW(NamedTuple):
    """Kendall's W with its chi-square test: ``chi2 = m (n - 1) W`` on ``df = n - 1``."""

    w: float
    chi2: float
    df: int
    p_value: float


_NO_W = KendallW(float("nan"), float("nan"), 0, float("nan"))


def kendall_w(scores: np.ndarray, *, tie_correction: bool = True) -> KendallW:
    """Kendall's coefficient of concordance for an ``(n items, m raters)`` matrix without gaps.

    Each rater's scores are turned into ranks over the items (``scipy.stats.rankdata``, tied
    scores share their average rank). With ``R_i`` the rank sum of item i and ``S = sum_i (R_i -
    mean(R))^2``::

        W = 12 S / (m^2 (n^3 - n) - m sum_j T_j),   T_j = sum over tie groups of rater j of (t^3 - t)

    where t is the size of a tie group; ``tie_correction=False`` drops the ``m sum_j T_j`` term
    (the textbook ``12 S / (m^2 (n^3 - n))``, which stays below 1 when raters tie items). W is 1
    when all raters rank the items alike and 0 when the rank sums are all equal. The test
    statistic ``m (n - 1) W`` is approximately chi-square with ``n - 1`` degrees of freedom (the
    test LLM-REDIAL reports). W is NaN when it is undefined: fewer than 2 items or raters, or
    (with the tie correction) every rater gave every item the same score.
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
    numerator, plain, ties = _kendall_terms(scores)
    return _kendall_result(numerator, plain - ties if tie_correction else plain, n, m)


def _kendall_terms(scores: np.ndarray) -> tuple[float, float, float]:
    """``(12 S, m^2 (n^3 - n), m sum_j T_j)`` of a complete (items, raters) matrix."""
    n, m = scores.shape
    ranks = rankdata(scores, axis=0)  # average ranks per rater (column)
    rank_sums = ranks.sum(axis=1)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    ties = sum(float((counts**3 - counts).sum()) for counts in _tie_counts(scores))
    return 12.0 * s, float(m**2 * (n**3 - n)), m * ties


def _kendall_result(numerator: float, denominator: float, n: int, m: int) -> KendallW:
    if denominator <= 0:  # every rater tied every item: no ranking to agree on
        return KendallW(float("nan"), float("nan"), n - 1, float("nan"))
    w = numerator / denominator
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


def _criterion_order(df: pd.DataFrame) -> list[str]:
    """The criteria present in ``df``: the campaign's order (``df.attrs``) first, then by name."""
    present = set(df["criterion"])
    declared = [c["name"] for c in df.attrs.get("criteria", []) if c.get("name") in present]
    return declared + sorted(present - set(declared))


def _count_table(answers: pd.DataFrame) -> pd.DataFrame:
    """How many judgments gave each value to each task: (tasks × values), both sorted.

    What ``pd.crosstab`` gives, through a grouped count that is much faster on large campaigns.
    """
    return answers.groupby(["task_id", "value"]).size().unstack(fill_value=0)


def _pairable(counts: pd.DataFrame) -> pd.DataFrame:
    """The rows of a (tasks × values) count table with two or more judgments."""
    return counts[counts.sum(axis=1) >= 2]


def _krippendorff(counts: pd.DataFrame, level: Level) -> float:
    """Alpha from a (tasks × values) count table; NaN when fewer than two values ever occur."""
    return _alpha_of_counts(counts.to_numpy(), counts.columns, level)


def _alpha_of_counts(table: np.ndarray, values: pd.Index, level: Level) -> float:
    """``_krippendorff`` on a bare (tasks × values) array whose columns are ``values``."""
    pairable = table[table.sum(axis=1) >= 2]
    if (pairable.sum(axis=0) > 0).sum() < 2:
        return float("nan")
    # With value counts the package takes the values to be 0..V-1 unless told: the interval
    # distance needs the real scores (nominal and ordinal only need their order).
    domain = values.to_numpy(dtype=np.float64) if level == "interval" else None
    return float(
        krippendorff.alpha(value_counts=pairable, value_domain=domain, level_of_measurement=level)
    )


def _unit_coincidences(counts: np.ndarray) -> np.ndarray:
    """Per task, its (values × values) coincidence matrix ``n_uc (n_uk - [c == k]) / (m_u - 1)``.

    ``counts`` is (tasks, values) with two or more judgments per task; the result is
    (tasks, values, values). Summed over tasks it is Krippendorff's coincidence matrix.
    """
    judged = counts.sum(axis=1)
    pairs = counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(counts.shape[1])
    return pairs / (judged - 1)[:, None, None]


def _alpha_from_coincidences(
    coincidences: np.ndarray, level: Level, values: np.ndarray
) -> np.ndarray:
    """Krippendorff's alpha of each (…, V, V) coincidence matrix; NaN where it is undefined.

    ``alpha = 1 - (n - 1) sum_ck o_ck d_ck / sum_ck n_c n_k d_ck`` with the squared distances of
    Krippendorff (2011): nominal ``[c != k]``, interval ``(v_c - v_k)^2``, ordinal
    ``(sum_{g=c..k} n_g - (n_c + n_k) / 2)^2``. Hand-rolled (the package takes one data set per
    call) so that a thousand bootstrap resamples cost a few array operations; the tests check it
    against ``krippendorff.alpha``.
    """
    n_c = coincidences.sum(axis=-1)  # (…, V) pairable values per category
    n = n_c.sum(axis=-1)
    if level == "nominal":
        distance = 1.0 - np.eye(coincidences.shape[-1])
    elif level == "interval":
        distance = (values[:, None] - values[None, :]) ** 2
    else:
        # For c <= k, sum_{g=c..k} n_g = cum_k - cum_c + n_c; the squared form is symmetric.
        cum = np.cumsum(n_c, axis=-1)
        between = cum[..., None, :] - cum[..., :, None]
        distance = (between + (n_c[..., :, None] - n_c[..., None, :]) / 2) ** 2
    observed = (coincidences * distance).sum(axis=(-2, -1))
    expected = (n_c[..., :, None] * n_c[..., None, :] * distance).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 - (n - 1) * observed / expected
    return np.where(expected > 0, alpha, np.nan)


def _alpha_interval(
    counts: pd.DataFrame, level: Level, n_boot: int, rng: np.random.Generator, ci: float
) -> tuple[float, float]:
    """Percentile bootstrap interval of alpha, resampling the pairable tasks with replacement."""
    pairable = _pairable(counts)
    if n_boot == 0 or len(pairable) < 2:
        return float("nan"), float("nan")
    units = _unit_coincidences(pairable.to_numpy(dtype=np.float64))
    flat = units.reshape(len(units), -1)
    # Only the interval distance reads the values (pairwise choices are not numbers).
    values = counts.columns.to_numpy(dtype=np.float64) if level == "interval" else np.zeros(0)
    alphas = []
    chunk = max(1, _BOOT_CHUNK_CELLS // len(units))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        # How often each task is drawn in each resample: (size, tasks), each row sums to tasks.
        draws = rng.integers(0, len(units), size=(size, len(units)))
        offsets = draws + len(units) * np.arange(size)[:, None]
        weights = np.bincount(offsets.ravel(), minlength=size * len(units))
        totals = weights.reshape(size, len(units)) @ flat  # (size, V * V)
        alphas.append(
            _alpha_from_coincidences(totals.reshape(size, *units.shape[1:]), level, values)
        )
    finite = np.concatenate(alphas)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


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


class _Blocks(NamedTuple):
    """Kendall's W over the blocks of an overlapping design (see ``_kendall_blocks``)."""

    corrected: KendallW
    uncorrected: float
    tasks: int
    blocks: int


def _kendall_blocks(matrix: pd.DataFrame) -> _Blocks:
    """Kendall's W over the complete blocks of a (tasks × annotators) matrix with gaps.

    Tasks are grouped by the exact set of annotators who rated them; each group with at least two
    tasks and two annotators is a complete (tasks × annotators) matrix. Returns the task-weighted
    mean W over blocks (tie-corrected and not), with the blocks' chi-square statistics and degrees
    of freedom summed (independent blocks), the number of tasks used and the number of blocks.
    A block whose tie-corrected W is undefined (everything tied) is left out of both means.
    """
    values = matrix.to_numpy()
    # One block per distinct pattern of present annotators.
    patterns, block_of_task = np.unique(~np.isnan(values), axis=0, return_inverse=True)
    block_of_task = block_of_task.ravel()
    weighted_w = weighted_plain = statistic = 0.0
    dof = n_tasks = n_blocks = 0
    for block, raters in enumerate(patterns):
        tasks = block_of_task == block
        if raters.sum() < 2 or tasks.sum() < 2:
            continue
        # One ranking per block for both versions of W (they differ only in the denominator).
        numerator, plain, ties = _kendall_terms(values[np.ix_(tasks, raters)])
        result = _kendall_result(numerator, plain - ties, int(tasks.sum()), int(raters.sum()))
        if np.isnan(result.w):
            continue
        weighted_w += result.w * tasks.sum()
        weighted_plain += numerator / plain * tasks.sum()
        statistic += result.chi2
        dof += result.df
        n_tasks += int(tasks.sum())
        n_blocks += 1
    if n_blocks == 0:
        return _Blocks(_NO_W, float("nan"), 0, 0)
    combined = KendallW(weighted_w / n_tasks, statistic, dof, float(chi2.sf(statistic, dof)))
    return _Blocks(combined, weighted_plain / n_tasks, n_tasks, n_blocks)


def _kendall_complete(matrix: pd.DataFrame) -> tuple[KendallW, int]:
    """Kendall's W on the tasks that every annotator of the matrix rated, and how many they are."""
    if matrix.shape[1] < 2:  # a single annotator: nobody to be concordant with
        return _NO_W, 0
    complete = matrix.dropna()
    if len(complete) < 2:
        return _NO_W, len(complete)
    return kendall_w(complete.to_numpy()), len(complete)


def _level(kind: str) -> Level:
    return "ordinal" if kind == "rating" else "nominal"


def agreement(
    df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, *, ci: float = 0.95
) -> pd.DataFrame:
    """Agreement per criterion of a ``judgments_frame``: one row per criterion.

    Columns (``AGREEMENT_COLUMNS``): ``n_items`` (tasks with two or more judgments, the units
    that can agree), ``n_raters`` (distinct annotators), ``n_judgments``, ``krippendorff_alpha``
    and its ``alpha_level`` with a percentile bootstrap interval ``alpha_ci_low`` /
    ``alpha_ci_high`` over ``n_boot`` resamples of the tasks (``seed`` fixes them; ``n_boot=0``
    skips the interval), ``krippendorff_alpha_interval`` (rating criteria), ``fleiss_kappa`` with
    ``fleiss_tasks`` / ``fleiss_raters_per_task``, and for rating criteria the Kendall's W
    columns: ``kendall_w``, ``kendall_w_uncorrected``, ``kendall_chi2``, ``kendall_df``,
    ``kendall_p``, ``kendall_tasks``, ``kendall_blocks``, ``kendall_w_complete``,
    ``kendall_complete_p``, ``kendall_complete_tasks``. The module docstring says what each
    computes on designs where not every annotator judges every task.

    In a fully crossed study (every annotator rates every task, as in LLM-REDIAL) there is one
    block and ``kendall_w`` = ``kendall_w_complete`` is the textbook value. Pairwise criteria get
    NaN for W: A/B/tie choices are not scores to rank.
    """
    if n_boot < 0:
        raise ValueError(f"`n_boot` is {n_boot}; use 0 (no interval) or more (1000 is usual)")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for criterion in _criterion_order(df):
        answers, kind = _answers(df[df["criterion"] == criterion])
        level = _level(kind)
        counts = _count_table(answers)
        kappa, fleiss_tasks, fleiss_k = _fleiss(answers)
        low, high = _alpha_interval(counts, level, n_boot, rng, ci)
        row: dict[str, Any] = {
            "criterion": criterion,
            "kind": kind,
            "n_items": len(_pairable(counts)),
            "n_raters": int(answers["annotator"].nunique()),
            "n_judgments": len(answers),
            "krippendorff_alpha": _krippendorff(counts, level),
            "alpha_level": level,
            "alpha_ci_low": low,
            "alpha_ci_high": high,
            "krippendorff_alpha_interval": (
                _krippendorff(counts, "interval") if kind == "rating" else float("nan")
            ),
            "fleiss_kappa": kappa,
            "fleiss_tasks": fleiss_tasks,
            "fleiss_raters_per_task": fleiss_k,
        }
        if kind == "rating":
            matrix = answers.pivot_table(index="task_id", columns="annotator", values="value")
            blocks = _kendall_blocks(matrix)
            complete, complete_tasks = _kendall_complete(matrix)
        else:
            blocks = _Blocks(_NO_W, float("nan"), 0, 0)
            complete, complete_tasks = _NO_W, 0
        row |= {
            "kendall_w": blocks.corrected.w,
            "kendall_w_uncorrected": blocks.uncorrected,
            "kendall_chi2": blocks.corrected.chi2,
            "kendall_df": blocks.corrected.df,
            "kendall_p": blocks.corrected.p_value,
            "kendall_tasks": blocks.tasks,
            "kendall_blocks": blocks.blocks,
            "kendall_w_complete": complete.w,
            "kendall_complete_p": complete.p_value,
            "kendall_complete_tasks": complete_tasks,
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def annotator_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Per annotator × criterion: how well the annotator agrees with the other annotators.

    For each of the annotator's judgments, "the others" are the other annotators who judged the
    same task on the same criterion. Columns (``ANNOTATOR_AGREEMENT_COLUMNS``):

    * ``n_judgments`` — the annotator's judgments; ``n_shared`` — those on tasks that at least one
      other annotator judged (the rest cannot agree or disagree, and the columns below skip them);
    * ``agreement_with_others`` — mean over the shared tasks of the share of the others who gave
      the same answer (exact match; the annotator's row of pairwise percent agreement);
    * ``agreement_with_majority`` — share of the ``majority_tasks`` (shared tasks where the
      others' most common answer is unique) on which the annotator gave that answer;
    * ``mean_abs_diff`` — rating criteria: mean over the shared tasks of ``|rating - mean of the
      others' ratings|``; NaN for pairwise criteria;
    * ``krippendorff_alpha`` — the criterion's alpha with everyone (``alpha_level`` as in
      ``agreement``), ``alpha_without`` — alpha with this annotator's judgments left out, and
      ``alpha_delta = alpha_without - krippendorff_alpha``: positive when the others agree better
      without this annotator.

    Within a criterion the rows are sorted so that the annotator who disagrees most comes first:
    largest ``alpha_delta``, then lowest ``agreement_with_others`` (NaN last).
    """
    tables = [
        _annotators_of_criterion(criterion, *_answers(df[df["criterion"] == criterion]))
        for criterion in _criterion_order(df)
    ]
    tables = [table for table in tables if not table.empty]
    if not tables:
        return pd.DataFrame(columns=ANNOTATOR_AGREEMENT_COLUMNS)
    return pd.concat(tables, ignore_index=True)


def _annotators_of_criterion(criterion: str, answers: pd.DataFrame, kind: str) -> pd.DataFrame:
    level = _level(kind)
    counts = _count_table(answers)
    table = counts.to_numpy(dtype=np.float64)
    rows = np.arange(len(answers))
    task = counts.index.get_indexer(answers["task_id"])
    value = counts.columns.get_indexer(answers["value"])
    # The others' answers on each judgment's task: the task's counts less this judgment.
    others = table[task]
    others[rows, value] -= 1
    n_others = others.sum(axis=1)
    shared = n_others > 0
    same = others[rows, value]
    top = others.max(axis=1, initial=0.0)
    has_majority = shared & ((others == top[:, None]).sum(axis=1) == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_same = np.where(shared, same / n_others, np.nan)
        if kind == "rating":
            scores = answers["value"].to_numpy(dtype=np.float64)
            task_sums = (table * counts.columns.to_numpy(dtype=np.float64)).sum(axis=1)
            others_mean = (task_sums[task] - scores) / n_others
            abs_diff = np.where(shared, np.abs(scores - others_mean), np.nan)
        else:
            abs_diff = np.full(len(answers), np.nan)
    per_judgment = pd.DataFrame(
        {
            "annotator": answers["annotator"].to_numpy(),
            "shared": shared,
            "share_same": share_same,
            "has_majority": has_majority,
            "with_majority": np.where(has_majority, same == top, np.nan),
            "abs_diff": abs_diff,
        }
    )
    alpha = _alpha_of_counts(table, counts.columns, level)
    result = []
    for annotator, group in per_judgment.groupby("annotator", sort=True):
        # Leave-one-out counts: the task × value table less this annotator's judgments.
        rest = table.copy()
        mine = group.index.to_numpy()
        np.subtract.at(rest, (task[mine], value[mine]), 1)
        without = _alpha_of_counts(rest, counts.columns, level)
        result.append(
            {
                "criterion": criterion,
                "kind": kind,
                "annotator": annotator,
                "n_judgments": len(group),
                "n_shared": int(group["shared"].sum()),
                "agreement_with_others": group["share_same"].mean(),
                "majority_tasks": int(group["has_majority"].sum()),
                "agreement_with_majority": group["with_majority"].mean(),
                "mean_abs_diff": group["abs_diff"].mean(),
                "alpha_level": level,
                "krippendorff_alpha": alpha,
                "alpha_without": without,
                "alpha_delta": without - alpha,
            }
        )
    frame = pd.DataFrame(result, columns=ANNOTATOR_AGREEMENT_COLUMNS)
    return frame.sort_values(
        ["alpha_delta", "agreement_with_others"], ascending=[False, True], na_position="last"
    ).reset_index(drop=True)
