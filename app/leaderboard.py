"""The Leaderboard: Bradley–Terry ratings from blind arena votes, with bootstrap intervals.

Votes with an identity leak and all votes of voters the sequential check flags are left out
(``db.vote_hygiene``) and counted in the summary. Options pick the vote sources (live arena,
imported CRSArena-Dial, simulated) and style control (``db.ranking``: ratings adjusted for reply
length and number of items). The tab fills itself on every page load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from db.arena import SOURCES, list_votes, votes_to_battles, votes_to_style
from db.ranking import bootstrap_ratings, style_covariates, vote_counts, win_rate_matrix
from db.schema import ArenaVote
from db.session import session_scope
from db.vote_hygiene import clean_votes

log = logging.getLogger(__name__)
BUSY = "The database is busy right now. Click Refresh in a few seconds."
BOOTSTRAP_ROUNDS = 200  # enough for stable 95% intervals at demo scale, fast on refresh
# A weak Gaussian prior on log-strengths (sd ~3): a model with one won vote gets ~+190, not +2000;
# with hundreds of votes it moves ratings by well under a point.
PRIOR_L2 = 0.1
PROVISIONAL_VOTES = 20  # below this many votes a model's rating is flagged as provisional
SOURCE_LABELS = {
    "arena": "Live arena votes",
    "crsarena-dial": "Imported (CRSArena-Dial)",
    "simulated": "Simulated",
}
# Human votes by default; simulated battles are shown on request, marked as such.
DEFAULT_SOURCES = ("arena", "crsarena-dial")
TABLE_COLUMNS = ["model", "rating", "95% CI", "votes"]

Result = tuple[pd.DataFrame, go.Figure | None, go.Figure | None, str]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _rating_chart(rows: list[tuple[str, tuple[float, float, float]]], title: str) -> go.Figure:
    chart = go.Figure(
        go.Scatter(
            x=[m for m, _ in rows],
            y=[r for _, (r, _, _) in rows],
            error_y=dict(
                type="data",
                symmetric=False,
                array=[hi - r for _, (r, _, hi) in rows],
                arrayminus=[r - lo for _, (r, lo, _) in rows],
            ),
            mode="markers",
        )
    )
    chart.update_layout(title=title, height=320, margin=dict(t=40, b=10))
    return chart


def win_rate_heatmap(battles: Sequence[tuple[str, str, str]]) -> go.Figure:
    """Row model's share of points against the column model, numbers in the cells.

    Pairs that never met are blank cells marked "–" (not 0.5, which would claim an even record).
    """
    wins = win_rate_matrix(battles)
    values = wins.to_numpy(dtype=float)
    met = ~np.isnan(values)
    text = np.where(met, np.vectorize(lambda v: f"{v:.2f}")(np.nan_to_num(values)), "–")
    np.fill_diagonal(text, "")
    heatmap = go.Figure(
        go.Heatmap(
            z=np.where(met, values, None).tolist(),  # None: a gap, no colour
            x=list(wins.columns),
            y=list(wins.index),
            text=text.tolist(),
            texttemplate="%{text}",
            zmin=0,
            zmax=1,
            colorscale="RdBu",
            hoverongaps=False,
        )
    )
    heatmap.update_layout(
        title="Win rate of row model vs column model (– never met)",
        height=320,
        margin=dict(t=40, b=10),
    )
    return heatmap


def _summary(votes: list[ArenaVote], cleaned, style_control: bool, table: pd.DataFrame) -> str:
    by_source = pd.Series([v.source for v in votes]).value_counts()
    parts = ", ".join(f"{SOURCE_LABELS.get(s, s).lower()}: {n}" for s, n in by_source.items())
    summary = f"{_plural(len(cleaned.kept), 'blind vote')}. From {parts}."
    dropped = []
    if cleaned.leaks:
        dropped.append(f"{cleaned.leaks} where a reply named its own model")
    if cleaned.flagged_votes:
        dropped.append(
            f"{cleaned.flagged_votes} from {_plural(len(cleaned.flagged_voters), 'voter')} whose "
            "votes look random or adversarial"
        )
    if dropped:
        summary += " Left out: " + "; ".join(dropped) + "."
    if style_control:
        summary += " Style control on: ratings are adjusted for reply length and number of items."
    if (table["votes"] < PROVISIONAL_VOTES).any():
        summary += f" Ratings of models with fewer than {PROVISIONAL_VOTES} votes are provisional."
    return summary


def ratings_table(
    battles: Sequence[tuple[str, str, str]], style: np.ndarray | None = None
) -> tuple[pd.DataFrame, list[tuple[str, tuple[float, float, float]]]]:
    """Bradley–Terry ratings with bootstrap intervals, best first: the table and its rows."""
    ratings = bootstrap_ratings(battles, n=BOOTSTRAP_ROUNDS, seed=0, l2=PRIOR_L2, style=style)
    counts = vote_counts(battles)
    rows = sorted(ratings.items(), key=lambda kv: -kv[1][0])
    table = pd.DataFrame(
        [
            {
                "model": model,
                "rating": round(r, 1),
                "95% CI": f"{lo:.0f} – {hi:.0f}",
                "votes": int(counts.loc[model, "battles"]) if model in counts.index else 0,
            }
            for model, (r, lo, hi) in rows
        ],
        columns=TABLE_COLUMNS,
    )
    return table, rows


def leaderboard(
    engine, *, style_control: bool = False, sources: Sequence[str] = DEFAULT_SOURCES
) -> Result:
    """Ratings table, rating chart, win-rate heatmap and a summary from the chosen blind votes."""
    votes = list_votes(engine, blind_only=True, sources=list(sources))
    cleaned = clean_votes(votes)
    battles = votes_to_battles(cleaned.kept)
    if not battles:
        message = "No blind votes yet: play a few blind rounds in the Arena tab."
        if votes:
            message = "Every vote of these sources was left out (identity leaks, flagged voters)."
        elif not sources:
            message = "Pick at least one source of votes."
        return pd.DataFrame(columns=TABLE_COLUMNS), None, None, message
    style = style_covariates(*votes_to_style(cleaned.kept)) if style_control else None
    table, rows = ratings_table(battles, style)
    title = "Bradley–Terry rating (95% bootstrap CI)" + (
        ", style-controlled" if style_control else ""
    )
    return (
        table,
        _rating_chart(rows, title),
        win_rate_heatmap(battles),
        _summary(votes, cleaned, style_control, table),
    )


def simulated_board(engine, human: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The board from simulated battles (`crs simulate --battles`) and its rank agreement with
    the human board ``human`` (Kendall's tau over the models on both), in words."""
    from scipy.stats import kendalltau

    battles = votes_to_battles(list_votes(engine, blind_only=True, sources=["simulated"]))
    if not battles:
        return pd.DataFrame(columns=TABLE_COLUMNS), (
            "No simulated battles yet: `crs simulate A,B --battles` lets a simulated user judge."
        )
    table, _ = ratings_table(battles)
    text = f"**Simulated users**: {_plural(len(battles), 'battle')}, kept apart from human votes."
    shared = sorted(set(table["model"]) & set(human["model"]))
    if len(shared) < 2:
        return table, text + " Their agreement with people shows once both rank two models."
    simulated = table.set_index("model").loc[shared, "rating"]
    people = human.set_index("model").loc[shared, "rating"]
    tau = kendalltau(simulated, people).statistic
    return table, (
        text + f" Rank agreement with the human board over {len(shared)} models: "
        f"Kendall's τ = {tau:.2f}."
    )


class _Cache:
    """The last leaderboards by (options, votes stored): a page load asks four times at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple, Result] = {}

    def simulated(self, engine) -> tuple[pd.DataFrame, str]:
        try:
            return simulated_board(engine, self.get(engine, False, DEFAULT_SOURCES)[0])
        except OperationalError:
            log.exception("simulated board not computed")
            return pd.DataFrame(columns=TABLE_COLUMNS), BUSY

    def get(self, engine, style_control: bool, sources: Sequence[str]) -> Result:
        try:
            with session_scope(engine, write=False) as session:
                stamp = session.execute(
                    select(func.count(ArenaVote.id), func.max(ArenaVote.id))
                ).one()
            key = (id(engine), style_control, tuple(sorted(sources)), tuple(stamp))
            with self._lock:  # one computation per key, though a page load asks four times
                if key not in self._results:
                    result = leaderboard(engine, style_control=style_control, sources=sources)
                    self._results = {key: result}
                return self._results[key]
        except OperationalError:
            log.exception("leaderboard not computed")
            return pd.DataFrame(columns=TABLE_COLUMNS), None, None, BUSY


def build_leaderboard_tab(engine) -> None:
    """Leaderboard tab: sources, style control, refresh; table and charts filled on page load."""
    cache = _Cache()

    def initial(index: int):
        return lambda: cache.get(engine, False, DEFAULT_SOURCES)[index]

    with gr.Row():
        sources = gr.CheckboxGroup(
            [(label, code) for code, label in SOURCE_LABELS.items() if code in SOURCES],
            value=list(DEFAULT_SOURCES),
            label="Votes",
            elem_id="leaderboard-sources",
        )
        style = gr.Checkbox(
            value=False,
            label="Style control",
            info="Adjust ratings for reply length and number of items.",
            elem_id="leaderboard-style",
        )
        refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
    # Callable values are evaluated on every page load, so the tab is never empty.
    summary = gr.Markdown(initial(3), elem_id="leaderboard-summary")
    table = gr.Dataframe(
        initial(0), label="Ratings", interactive=False, elem_id="leaderboard-table"
    )
    with gr.Row():
        chart = gr.Plot(initial(1), label="Ratings")
        heatmap = gr.Plot(initial(2), label="Win rates")

    simulated_summary = gr.Markdown(
        lambda: cache.simulated(engine)[1], elem_id="leaderboard-simulated-summary"
    )
    simulated_table = gr.Dataframe(
        lambda: cache.simulated(engine)[0],
        label="Simulated users (not in the ratings above)",
        interactive=False,
        elem_id="leaderboard-simulated",
    )

    def show(style_control: bool, chosen: list[str]):
        return *cache.get(engine, bool(style_control), chosen or []), *cache.simulated(engine)

    outputs = [table, chart, heatmap, summary, simulated_table, simulated_summary]
    refresh.click(show, [style, sources], outputs, api_name="leaderboard")
    style.change(show, [style, sources], outputs)
    sources.change(show, [style, sources], outputs)
