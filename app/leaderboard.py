"""The Leaderboard: Bradley–Terry ratings from blind arena votes, with bootstrap intervals."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from db.arena import list_votes, votes_to_battles
from db.ranking import bootstrap_ratings, vote_counts, win_rate_matrix

BOOTSTRAP_ROUNDS = 200  # enough for stable 95% intervals at demo scale, fast on refresh
# A weak Gaussian prior on log-strengths (sd ~3): a model with one won vote gets ~+190, not +2000;
# with hundreds of votes it moves ratings by well under a point.
PRIOR_L2 = 0.1
PROVISIONAL_VOTES = 20  # below this many votes a model's rating is flagged as provisional


def leaderboard(engine) -> tuple[pd.DataFrame, go.Figure | None, go.Figure | None, str]:
    """Ratings table, rating chart, win-rate heatmap and a one-line summary from blind votes."""
    battles = votes_to_battles(list_votes(engine, blind_only=True))
    if not battles:
        return (
            pd.DataFrame(columns=["model", "rating", "95% CI", "votes"]),
            None,
            None,
            ("No blind votes yet: play a few blind rounds in the Arena tab."),
        )
    ratings = bootstrap_ratings(battles, n=BOOTSTRAP_ROUNDS, seed=0, l2=PRIOR_L2)
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
        ]
    )
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
    chart.update_layout(
        title="Bradley–Terry rating (95% bootstrap CI)", height=320, margin=dict(t=40, b=10)
    )
    wins = win_rate_matrix(battles)
    heatmap = go.Figure(
        go.Heatmap(
            z=wins.values,
            x=list(wins.columns),
            y=list(wins.index),
            zmin=0,
            zmax=1,
            colorscale="RdBu",
        )
    )
    heatmap.update_layout(
        title="Win rate of row model vs column model", height=320, margin=dict(t=40, b=10)
    )
    summary = f"{len(battles)} blind vote{'' if len(battles) == 1 else 's'}."
    if (table["votes"] < PROVISIONAL_VOTES).any():
        summary += f" Ratings of models with fewer than {PROVISIONAL_VOTES} votes are provisional."
    return table, chart, heatmap, summary


def build_leaderboard_tab(engine) -> None:
    """Leaderboard tab: refresh button, ratings table and charts."""
    refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
    summary = gr.Markdown(elem_id="leaderboard-summary")
    table = gr.Dataframe(label="Ratings", interactive=False, elem_id="leaderboard-table")
    with gr.Row():
        chart = gr.Plot(label="Ratings")
        heatmap = gr.Plot(label="Win rates")

    def show():
        t, c, h, s = leaderboard(engine)
        return t, c, h, s

    refresh.click(show, None, [table, chart, heatmap, summary], api_name="leaderboard")
