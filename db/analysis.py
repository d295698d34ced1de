"""Analysis of a human-evaluation campaign: one long table of judgments and the statistics on it.

Start with ``judgments_frame(engine, campaign)``: one row per latest judgment (the highest
revision per assignment and criterion), without excluded annotators and attention-check (gold)
tasks unless asked. Everything else takes that frame:

* ``rating_summary`` — mean, standard deviation and a 95 % percentile-bootstrap interval of the
  ratings per system and criterion;
* ``pairwise_summary`` — wins / ties / losses per system pair and criterion with a two-sided
  binomial (sign) test on the decided comparisons, Holm-adjusted within a criterion;
* ``pairwise_ratings`` — Bradley–Terry ratings with bootstrap intervals (``db.ranking``), from the
  pairwise judgments, the arena votes, or both together;
* ``agreement`` — Krippendorff's alpha (with a bootstrap interval), Fleiss' kappa and Kendall's W
  per criterion, and ``annotator_agreement`` — each annotator against the others
  (``db.agreement``);
* ``paper_table`` — mean scores, rows = systems and columns = criteria, in Markdown or LaTeX, shaped
  like Table 4 of the pre-sales LLM⇄CRS paper;
* ``figures`` — plotly score distributions and pairwise win-rate heatmaps.

Names that come from the database (systems, criteria, annotators) are HTML-escaped where a
renderer would read markup: plotly labels and the Markdown paper table.

``db.export.export_campaign`` writes all of it to files.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from scipy.stats import binomtest
from sqlalchemy import Engine, Select, and_, func, select
from sqlalchemy.orm import Session, aliased
from statsmodels.stats.multitest import multipletests

from db.agreement import agreement, annotator_agreement
from db.arena import ARENA_CRITERION, votes_to_battles
from db.campaigns import NOT_APPLICABLE
from db.ranking import Battle, bootstrap_ratings, vote_counts, win_rate_matrix
from db.schema import (
    Annotator,
    ArenaVote,
    Assignment,
    Campaign,
    Context,
    Event,
    Judgment,
    Response,
    System,
    Task,
)
from db.session import session_scope

__all__ = [
    "FRAME_COLUMNS",
    "agreement",
    "annotator_agreement",
    "figures",
    "judgments_frame",
    "pairwise_ratings",
    "pairwise_summary",
    "paper_table",
    "rating_summary",
    "time_summary",
    "wide_frame",
]

FRAME_COLUMNS = [
    "campaign",
    "task_id",
    "kind",
    "context_id",
    "context_source",
    "context_external_id",
    "assignment_id",
    "annotator",
    "criterion",
    "rating",
    "choice",
    "system",
    "system_a",
    "system_b",
    "left_is_a",
    "reason",
    "revision",
    "submitted_at",
    "seconds",
    "too_fast",
    "excluded",
    "is_gold",
]


# --- loading --------------------------------------------------------------------------------


def _latest_judgments(campaign_id: int) -> Select[Any]:
    """One row per latest judgment of the campaign, joined to everything a row reports."""
    # The highest revision per (assignment, criterion); the unique index on (assignment_id,
    # criterion, revision) serves both this aggregate and the join back to the judgment row.
    latest = (
        select(
            Judgment.assignment_id,
            Judgment.criterion,
            func.max(Judgment.revision).label("revision"),
        )
        .join(Assignment, Assignment.id == Judgment.assignment_id)
        .join(Task, Task.id == Assignment.task_id)
        .where(Task.campaign_id == campaign_id)
        .group_by(Judgment.assignment_id, Judgment.criterion)
        .subquery()
    )
    response_a, response_b = aliased(Response), aliased(Response)
    system_a, system_b = aliased(System), aliased(System)
    return (
        select(
            Task.id.label("task_id"),
            Task.kind,
            Task.context_id,
            Context.source.label("context_source"),
            Context.external_id.label("context_external_id"),
            Assignment.id.label("assignment_id"),
            Annotator.name.label("annotator"),
            Judgment.criterion,
            Judgment.rating,
            Judgment.choice,
            system_a.name.label("system_a_name"),
            system_a.version.label("system_a_version"),
            system_b.name.label("system_b_name"),
            system_b.version.label("system_b_version"),
            Assignment.left_is_a,
            Judgment.reason,
            Judgment.revision,
            Judgment.submitted_at,
            Annotator.excluded,
        )
        .select_from(latest)
        .join(
            Judgment,
            and_(
                Judgment.assignment_id == latest.c.assignment_id,
                Judgment.criterion == latest.c.criterion,
                Judgment.revision == latest.c.revision,
            ),
        )
        .join(Assignment, Assignment.id == Judgment.assignment_id)
        .join(Annotator, Annotator.id == Assignment.annotator_id)
        .join(Task, Task.id == Assignment.task_id)
        .join(Context, Context.id == Task.context_id)
        .join(response_a, response_a.id == Task.response_a_id)
        .join(system_a, system_a.id == response_a.system_id)
        .outerjoin(response_b, response_b.id == Task.response_b_id)
        .outerjoin(system_b, system_b.id == response_b.system_id)
        .order_by(Task.position, Task.id, Annotator.name, Judgment.criterion)
    )


def _time_on_task(session: Session, campaign_id: int) -> dict[int, float]:
    """Seconds per assignment from its events: the first submit minus the last open before it.

    Edits are not counted: the first answer is the annotator's reading time.
    """
    events = session.execute(
        select(Event.assignment_id, Event.kind, Event.at)
        .join(Assignment, Assignment.id == Event.assignment_id)
        .join(Task, Task.id == Assignment.task_id)
        .where(Task.campaign_id == campaign_id, Event.kind.in_(("opened", "submitted")))
        .order_by(Event.assignment_id, Event.at, Event.id)
    ).all()
    opened: dict[int, Any] = {}
    seconds: dict[int, float] = {}
    for assignment_id, kind, at in events:
        if kind == "opened":
            opened[assignment_id] = at
        elif assignment_id not in seconds and assignment_id in opened:
            seconds[assignment_id] = (at - opened[assignment_id]).total_seconds()
    return seconds


def time_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median time on task per annotator and per system (one row each, ``by`` says which).

    Counted once per assignment (a task's criteria share one time); ``too_fast`` counts the
    judgments under the campaign's ``min_seconds``.
    """
    columns = ["by", "name", "assignments", "median_seconds", "too_fast"]
    per_task = df.drop_duplicates("assignment_id")
    if per_task.empty:
        return pd.DataFrame(columns=columns)
    pairs = per_task["system_a"].fillna("") + " vs " + per_task["system_b"].fillna("")
    systems = per_task["system"].where(per_task["system"].notna(), pairs)
    rows = []
    for by, keys in (("annotator", per_task["annotator"]), ("system", systems)):
        for name, group in per_task.groupby(keys, sort=True):
            rows.append(
                {
                    "by": by,
                    "name": name,
                    "assignments": len(group),
                    "median_seconds": group["seconds"].median(),
                    "too_fast": int(group["too_fast"].sum()),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _system_label(name: pd.Series, version: pd.Series) -> pd.Series:
    """``name@version``, or ``name`` when the version is empty (as ``votes_to_battles`` labels)."""
    return name.where(version.isna() | (version == ""), name + "@" + version)


def judgments_frame(
    engine: Engine | None,
    campaign: str,
    *,
    include_excluded: bool = False,
    include_gold: bool = False,
) -> pd.DataFrame:
    """The campaign's judgments in long format: one row per latest judgment.

    Columns (``FRAME_COLUMNS``): ``campaign``, ``task_id``, ``kind`` ("rating" / "pairwise"),
    ``context_id``, ``context_source``, ``context_external_id``, ``assignment_id``, ``annotator``,
    ``criterion``, ``rating`` (nullable integer), ``choice`` ("A" / "B" / "tie", "A" being the
    task's ``response_a`` whatever side it was shown on), ``system`` (rating tasks), ``system_a`` /
    ``system_b`` (pairwise tasks), ``left_is_a``, ``reason``, ``revision``, ``submitted_at`` (UTC),
    ``seconds`` (time on task: from the last "opened" event before the first submit of the
    assignment to that submit; NaN without events), ``too_fast`` (under the campaign's
    ``min_seconds``), ``excluded`` (the annotator's flag) and ``is_gold`` (an attention-check or
    onboarding task). "Can't judge" (N/A) answers are left out and counted in ``dropped``.

    Systems are labelled ``name@version`` (``name`` when unversioned): the labels
    ``db.arena.votes_to_battles(votes, with_version=True)`` gives arena votes. Only the highest
    revision of each (assignment, criterion) counts. Judgments of excluded annotators and of gold
    tasks are dropped unless ``include_excluded`` / ``include_gold``; ``frame.attrs`` keeps the
    campaign's ``criteria`` and how many judgments were ``dropped``.
    """
    with session_scope(engine, write=False) as session:
        found = session.execute(
            select(Campaign.id, Campaign.criteria, Campaign.settings).where(
                Campaign.name == campaign
            )
        ).one_or_none()
        if found is None:
            names = session.scalars(select(Campaign.name).order_by(Campaign.name)).all()
            raise LookupError(
                f"no campaign named {campaign!r}; the campaigns in this database are "
                f"{', '.join(map(repr, names)) if names else '(none)'}"
            )
        campaign_id, criteria, settings = found
        # A JSON null and an empty dict both mean "no attention check".
        gold_tasks = [
            task_id
            for task_id, gold in session.execute(
                select(Task.id, Task.gold).where(
                    Task.campaign_id == campaign_id, Task.gold.is_not(None)
                )
            )
            if gold
        ]
        gold_tasks += session.scalars(
            select(Task.id).where(Task.campaign_id == campaign_id, Task.stage == "onboarding")
        ).all()
        result = session.execute(_latest_judgments(campaign_id))
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
        seconds = _time_on_task(session, campaign_id)

    label_a = _system_label(frame.pop("system_a_name"), frame.pop("system_a_version"))
    label_b = _system_label(frame.pop("system_b_name"), frame.pop("system_b_version"))
    rating_task = frame["kind"] == "rating"
    frame["system"] = label_a.where(rating_task)
    frame["system_a"] = label_a.mask(rating_task)
    frame["system_b"] = label_b.mask(rating_task)
    frame["campaign"] = campaign
    frame["rating"] = frame["rating"].astype("Int64")
    frame["left_is_a"] = frame["left_is_a"].astype(bool)
    frame["excluded"] = frame["excluded"].astype(bool)
    frame["submitted_at"] = pd.to_datetime(frame["submitted_at"], utc=True)
    frame["is_gold"] = frame["task_id"].isin(gold_tasks)
    frame["seconds"] = frame["assignment_id"].map(seconds).astype(float)
    minimum = (settings or {}).get("min_seconds")
    frame["too_fast"] = frame["seconds"] < minimum if minimum is not None else False

    drop_excluded = frame["excluded"] & (not include_excluded)
    drop_gold = frame["is_gold"] & ~drop_excluded & (not include_gold)
    drop_na = (frame["choice"] == NOT_APPLICABLE) & ~drop_excluded & ~drop_gold
    dropped = {
        "excluded_annotators": int(drop_excluded.sum()),
        "gold_tasks": int(drop_gold.sum()),
        "not_applicable": int(drop_na.sum()),
    }
    keep = ~(drop_excluded | drop_gold | drop_na)
    frame = frame.loc[keep, FRAME_COLUMNS].reset_index(drop=True)
    frame.attrs = {"campaign": campaign, "criteria": criteria, "dropped": dropped}
    return frame


def wide_frame(df: pd.DataFrame, kind: Literal["rating", "pairwise"]) -> pd.DataFrame:
    """One row per task × criterion and one column per annotator (their rating or choice).

    Tasks of ``kind`` only: ratings and A/B/tie choices do not share a column type. The first
    columns describe the task (``task_id``, ``criterion``, ``context_source``,
    ``context_external_id`` and ``system`` or ``system_a`` / ``system_b``); a cell is empty where
    the annotator did not judge the task.
    """
    systems = ["system"] if kind == "rating" else ["system_a", "system_b"]
    index = ["task_id", "criterion", "context_source", "context_external_id", *systems]
    clashes = sorted(set(index) & set(df["annotator"]))
    if clashes:
        raise ValueError(
            f"annotator name(s) {clashes} clash with the wide table's task columns; "
            "rename the annotator(s) before exporting the wide format"
        )
    rows = df[df["kind"] == kind]
    wide = rows.pivot(
        index=index, columns="annotator", values="rating" if kind == "rating" else "choice"
    )
    wide.columns.name = None
    return wide.reset_index()


# --- statistics -----------------------------------------------------------------------------


def _criteria(df: pd.DataFrame, kind: str) -> list[str]:
    """The criteria of ``kind`` in ``df``, in the campaign's order (``df.attrs``), else by name."""
    column = "rating" if kind == "rating" else "choice"
    present = set(df.loc[df[column].notna(), "criterion"])
    declared = [c["name"] for c in df.attrs.get("criteria", []) if c.get("name") in present]
    return declared + sorted(present - set(declared))


def _bootstrap_mean_interval(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, ci: float
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Resampling n ratings with replacement is the same as drawing the counts of each distinct
    rating from a multinomial with the observed shares, which costs O(n_boot × distinct values)
    instead of O(n_boot × n). Judgments are resampled as if independent.
    """
    distinct, counts = np.unique(values, return_counts=True)
    draws = rng.multinomial(len(values), counts / len(values), size=n_boot)  # (n_boot, distinct)
    means = draws @ distinct / len(values)
    low, high = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def rating_summary(
    df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, *, ci: float = 0.95
) -> pd.DataFrame:
    """Per system × rating criterion: ``n``, ``mean``, ``std`` (ddof=1), ``ci_low``, ``ci_high``.

    The interval is a percentile bootstrap of the mean over ``n_boot`` resamples of the judgments.
    """
    if n_boot < 1:
        raise ValueError(f"`n_boot` is {n_boot}; use at least 1 bootstrap resample (1000 is usual)")
    columns = ["system", "criterion", "n", "mean", "std", "ci_low", "ci_high"]
    ratings = df[df["rating"].notna() & df["system"].notna()]
    rng = np.random.default_rng(seed)
    rows = []
    for criterion in _criteria(ratings, "rating"):
        by_system = ratings[ratings["criterion"] == criterion].groupby("system")["rating"]
        for system, series in by_system:
            values = series.to_numpy(dtype=np.float64)
            low, high = _bootstrap_mean_interval(values, n_boot, rng, ci)
            std = values.std(ddof=1) if len(values) > 1 else np.nan
            rows.append([system, criterion, len(values), values.mean(), std, low, high])
    return pd.DataFrame(rows, columns=columns)


def pairwise_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per system pair × pairwise criterion: wins, ties, losses, their rates and a sign test.

    A pair is ``system_1`` vs ``system_2`` in name order; ``wins`` are ``system_1``'s. ``p_value``
    is the two-sided exact binomial test (``scipy.stats.binomtest``, p = 0.5) of wins among the
    decided comparisons (ties left out); NaN when every comparison was a tie. ``p_holm`` adjusts
    the p-values of one criterion's pairs for multiple comparisons (Holm).
    """
    columns = [
        "criterion",
        "system_1",
        "system_2",
        "n",
        "wins",
        "ties",
        "losses",
        "win_rate",
        "tie_rate",
        "loss_rate",
        "p_value",
        "p_holm",
    ]
    pairs = df[df["choice"].notna() & df["system_a"].notna()]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    # Orient each judgment to the pair's name order, so that "A" wins for system_1 unless swapped.
    swapped = (pairs["system_a"] > pairs["system_b"]).to_numpy()
    choice = pairs["choice"].to_numpy()
    oriented = pd.DataFrame(
        {
            "criterion": pairs["criterion"].to_numpy(),
            "system_1": np.where(swapped, pairs["system_b"], pairs["system_a"]),
            "system_2": np.where(swapped, pairs["system_a"], pairs["system_b"]),
            "wins": choice == np.where(swapped, "B", "A"),
            "ties": choice == "tie",
            "losses": choice == np.where(swapped, "A", "B"),
        }
    )
    table = oriented.groupby(["criterion", "system_1", "system_2"], as_index=False).sum()
    table["n"] = table[["wins", "ties", "losses"]].sum(axis=1)
    for count, rate in (("wins", "win_rate"), ("ties", "tie_rate"), ("losses", "loss_rate")):
        table[rate] = table[count] / table["n"]
    table["p_value"] = [
        binomtest(int(wins), int(wins + losses), 0.5).pvalue if wins + losses else np.nan
        for wins, losses in zip(table["wins"], table["losses"], strict=True)
    ]
    table["p_holm"] = np.nan
    for _, group in table.groupby("criterion"):
        tested = group["p_value"].dropna()
        if len(tested):
            table.loc[tested.index, "p_holm"] = multipletests(tested, method="holm")[1]
    # The groupby sorted pairs by name; a stable sort puts the criteria in the campaign's order.
    order = {name: i for i, name in enumerate(_criteria(df, "pairwise"))}
    table = table.sort_values("criterion", key=lambda column: column.map(order), kind="stable")
    return table[columns].reset_index(drop=True)


def _battles(df: pd.DataFrame, criterion: str) -> list[Battle]:
    """The pairwise judgments of ``criterion`` as ``db.ranking`` battles (choice = outcome)."""
    rows = df[(df["criterion"] == criterion) & df["choice"].notna() & df["system_a"].notna()]
    return list(zip(rows["system_a"], rows["system_b"], rows["choice"], strict=True))


RATINGS_COLUMNS = ["source", "criterion", "system", "rating", "ci_low", "ci_high", "battles"]


def _ratings_table(
    battles: Sequence[Battle], source: str, criterion: str, n_boot: int, seed: int, ci: float
) -> pd.DataFrame:
    fitted = bootstrap_ratings(battles, n=n_boot, seed=seed, ci=ci)
    played = vote_counts(battles)["battles"]
    rows = [
        [source, criterion, system, rating, low, high, int(played[system])]
        for system, (rating, low, high) in fitted.items()
    ]
    return pd.DataFrame(rows, columns=RATINGS_COLUMNS).sort_values("rating", ascending=False)


def pairwise_ratings(
    df: pd.DataFrame,
    arena_votes: Sequence[Battle] | Sequence[ArenaVote] | None = None,
    *,
    combine: bool = False,
    criterion: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Bradley–Terry ratings with bootstrap intervals (``db.ranking.bootstrap_ratings``).

    One fit per pairwise criterion of ``df`` (or only ``criterion``), source "judgments". With
    ``arena_votes`` — battles from ``votes_to_battles(list_votes(engine), with_version=True)`` or
    the ``ArenaVote`` rows themselves — the arena gets its own fit (source "arena", criterion
    "overall") or, with ``combine=True``, its battles join the judgments of the one criterion
    (source "judgments+arena"). Columns: ``source``, ``criterion``, ``system``, ``rating``,
    ``ci_low``, ``ci_high``, ``battles``; best first within a fit.
    """
    available = _criteria(df, "pairwise")
    if criterion is not None and criterion not in available:
        raise ValueError(
            f"`criterion` is {criterion!r}, which has no pairwise judgments; "
            f"use one of {available or '(none)'}"
        )
    criteria = [criterion] if criterion is not None else available
    arena: list[Battle] = []
    if arena_votes:
        arena = (
            votes_to_battles(arena_votes, with_version=True)  # type: ignore[arg-type]
            if isinstance(arena_votes[0], ArenaVote)
            else list(arena_votes)  # type: ignore[arg-type]
        )
    if combine and not arena:
        raise ValueError("`combine=True` needs `arena_votes` to combine with the judgments")
    if combine and len(criteria) != 1:
        raise ValueError(
            f"`combine=True` adds the arena votes to one criterion, and {criteria} have pairwise "
            "judgments; pass `criterion=` to choose"
        )
    tables = [
        _ratings_table(
            _battles(df, name) + (arena if combine else []),
            "judgments+arena" if combine else "judgments",
            name,
            n_boot,
            seed,
            ci,
        )
        for name in criteria
    ]
    if arena and not combine:
        tables.append(_ratings_table(arena, "arena", ARENA_CRITERION["name"], n_boot, seed, ci))
    if not tables:
        return pd.DataFrame(columns=RATINGS_COLUMNS)
    return pd.concat(tables, ignore_index=True)


# --- presentation ---------------------------------------------------------------------------

_LATEX_SPECIAL = re.compile(r"([&%$#_{}~^\\])")


def _latex_escape(text: str) -> str:
    replacements = {
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "\\": r"\textbackslash{}",
    }
    return _LATEX_SPECIAL.sub(lambda m: replacements.get(m[1], "\\" + m[1]), text)


def _html_text(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` escaped, for renderers that read HTML in labels.

    Plotly draws a subset of HTML tags in titles, ticks, legends and hovers, and Markdown viewers
    pass HTML through; plotly turns the entities back into the characters, as text.
    """
    return html.escape(text, quote=False)  # quotes cannot open a tag; left as they are


def paper_table(
    df: pd.DataFrame,
    fmt: Literal["markdown", "latex"] = "markdown",
    *,
    by: str | None = None,
    digits: int = 4,
) -> str:
    """Mean rating per system (rows) and criterion (columns), the best of each column in bold.

    Shaped like Table 4 of the pre-sales LLM⇄CRS paper. With ``by`` (a column of ``df``, e.g.
    ``"context_source"``) the criteria repeat under one group per value, then under "All", as the
    paper groups product categories.
    """
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"`fmt` is {fmt!r}; use 'markdown' or 'latex'")
    ratings = df[df["rating"].notna() & df["system"].notna()]
    if ratings.empty:
        raise ValueError(
            "no rating judgments to tabulate: paper_table shows mean scores of rating criteria "
            "(use pairwise_summary for pairwise ones)"
        )
    if by is not None and by not in df.columns:
        raise ValueError(
            f"`by` is {by!r}, not a column of the frame; use one of {list(df.columns)}"
        )
    criteria = _criteria(ratings, "rating")
    groups = [(str(value), part) for value, part in ratings.groupby(by)] if by else []
    groups.append(("All", ratings))
    systems = sorted(ratings["system"].unique())
    means = pd.concat(
        [
            part.groupby(["system", "criterion"])["rating"]
            .mean()
            .unstack()
            .reindex(index=systems, columns=criteria)
            for _, part in groups
        ],
        axis=1,
    ).astype(float)  # an optional criterion leaves cells empty: NaN, not pandas' NA

    bold = (lambda s: f"**{s}**") if fmt == "markdown" else (lambda s: rf"\textbf{{{s}}}")
    escape = (lambda s: _html_text(s).replace("|", r"\|")) if fmt == "markdown" else _latex_escape
    best = means.max().to_numpy()  # per column, NaN-skipping; ties are all bold
    body = []
    for system, row in zip(systems, means.to_numpy(), strict=True):
        cells = [escape(system)]
        for value, top in zip(row, best, strict=True):
            text = "–" if np.isnan(value) else f"{value:.{digits}f}"
            cells.append(bold(text) if value == top else text)
        body.append(cells)
    header = ["system", *(escape(c) for _ in groups for c in criteria)]
    group_names = [escape(name) for name, _ in groups] if by else []

    if fmt == "markdown":
        # The paper's layout: a row of group names over the criteria, each name over its first.
        spans = [cell for name in group_names for cell in [name, *[""] * (len(criteria) - 1)]]
        heads = [["", *spans], header] if group_names else [header]
        rows = [heads[0], ["---"] * len(header), *heads[1:], *body]
        return "".join("| " + " | ".join(cells) + " |\n" for cells in rows)

    width = len(criteria)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
        r"\toprule",
    ]
    if group_names:
        spans = " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{name}}}" for name in group_names)
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(groups))
        )
        lines += [f" & {spans} \\\\", rules]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Mean human-evaluation scores per system; the best score of each column is in bold.}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    """A file-name-safe version of a criterion name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "criterion"


def figures(df: pd.DataFrame) -> dict[str, go.Figure]:
    """Plotly figures keyed by a file-name-safe name.

    ``"scores"``: per rating criterion, the share of each score per system (grouped bars, one
    panel per criterion). ``"win_rate_<criterion>"``: per pairwise criterion, a heatmap of the
    share of points the row system took from the column system (``db.ranking.win_rate_matrix``,
    a tie = half a point each). Names are HTML-escaped in every label (``_html_text``).
    """
    result: dict[str, go.Figure] = {}
    ratings = df[df["rating"].notna() & df["system"].notna()]
    criteria = _criteria(ratings, "rating")
    if criteria:
        systems = sorted(ratings["system"].unique())
        colours = dict(zip(systems, qualitative.Plotly * (len(systems) // 10 + 1), strict=False))
        figure = make_subplots(
            rows=1,
            cols=len(criteria),
            subplot_titles=[_html_text(c) for c in criteria],
            shared_yaxes=True,
        )
        for column, criterion in enumerate(criteria, start=1):
            subset = ratings[ratings["criterion"] == criterion]
            shares = pd.crosstab(subset["system"], subset["rating"], normalize="index")
            for system in shares.index:
                figure.add_trace(
                    go.Bar(
                        x=shares.columns.astype(str),
                        y=shares.loc[system],
                        name=_html_text(system),
                        legendgroup=_html_text(system),
                        showlegend=column == 1,
                        marker_color=colours[system],
                    ),
                    row=1,
                    col=column,
                )
            figure.update_xaxes(title_text="score", type="category", row=1, col=column)
        figure.update_yaxes(title_text="share of judgments", tickformat=".0%", row=1, col=1)
        figure.update_layout(barmode="group", title="Score distribution per system")
        result["scores"] = figure
    for criterion in _criteria(df, "pairwise"):
        rates = win_rate_matrix(_battles(df, criterion))
        heatmap = go.Heatmap(
            z=rates.to_numpy(),
            x=[_html_text(system) for system in rates.columns],
            y=[_html_text(system) for system in rates.index],
            zmin=0.0,
            zmax=1.0,
            colorscale="RdBu",
            texttemplate="%{z:.2f}",
            colorbar={"title": "win rate"},
        )
        figure = go.Figure(heatmap)
        figure.update_layout(
            title=(
                f"{_html_text(criterion)}: share of points of the row system against the column "
                "system"
            ),
            xaxis_title="opponent",
            yaxis_title="system",
            yaxis_autorange="reversed",
        )
        result[f"win_rate_{_slug(criterion)}"] = figure
    return result
