"""The Leaderboard tab: filled on page load, honest heatmap, sources, style control, dropped votes."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest

from app.leaderboard import build_leaderboard_tab, leaderboard, win_rate_heatmap
from backend.types import Dialogue, Turn
from db.arena import record_vote
from db.session import init_db
from db.vote_hygiene import IDENTITY_LEAK


@pytest.fixture
def engine(tmp_path):
    return init_db(f"sqlite:///{tmp_path / 'arena.sqlite'}")


def _conv(words: int) -> Dialogue:
    return Dialogue(
        id="c",
        turns=[Turn(role="user", text="hi"), Turn(role="system", text="word " * words)],
    )


def _vote(engine, n, a, b, vote="A", words=(5, 5), **extra):
    record_vote(
        engine,
        round_id=f"r{n}",
        model_a=a,
        model_b=b,
        left_model=a,
        vote=vote,
        conversation_a=_conv(words[0]),
        conversation_b=_conv(words[1]),
        **extra,
    )


def test_the_tab_is_filled_when_the_page_loads(engine):
    _vote(engine, 1, "x", "y")
    with gr.Blocks() as demo:
        build_leaderboard_tab(engine)
    loaders = {
        c.elem_id or type(c).__name__: c.load_event_to_attach[0]
        for c in demo.blocks.values()
        if isinstance(c, gr.components.Component) and c.load_event_to_attach
    }
    assert {"leaderboard-table", "Plot", "leaderboard-summary"} <= set(loaders)
    _vote(engine, 2, "x", "y")  # a later page load sees the new vote
    table = loaders["leaderboard-table"]()
    assert list(table["model"]) == ["x", "y"] and table["votes"].tolist() == [2, 2]
    assert loaders["leaderboard-summary"]().startswith("2 blind votes.")
    assert loaders["leaderboard-simulated-summary"]().startswith("No simulated battles yet")


def test_simulated_battles_get_their_own_board_and_its_agreement_with_people(engine):
    from app.leaderboard import simulated_board
    from backend.eval.simulate import simulated_battles
    from backend.registry import create_model
    from backend.simulator import SimulatorConfig, TemplateSimulator
    from backend.types import Interaction, UserHistory
    from tests.conftest import make_dataset

    dataset = make_dataset()
    for u, liked in enumerate(["1", "3", "2", "4"]):
        dataset.histories[f"s{u}"] = UserHistory(
            user_id=f"s{u}",
            interactions=[
                Interaction(item_id="5", rating=2, time=1),
                Interaction(item_id=liked, rating=5, time=2),
            ],
        )
    cfg = SimulatorConfig(max_turns=3)
    a, b = create_model("popularity", dataset), create_model("retrieval", dataset)
    counts = simulated_battles(engine, a, b, dataset, lambda: TemplateSimulator(cfg), cfg, 5)
    assert sum(counts.values()) == 5
    again = simulated_battles(engine, a, b, dataset, lambda: TemplateSimulator(cfg), cfg, 5)
    assert again == counts  # the same rounds: stored once
    human, *_ = leaderboard(engine)  # simulated votes stay out of the human board
    assert human.empty
    board, text = simulated_board(engine, human)
    assert set(board["model"]) == {"popularity", "retrieval"} and "5 battles" in text
    _vote(engine, 1, "retrieval", "popularity")  # one human vote: both boards rank both
    human, *_ = leaderboard(engine)
    _, text = simulated_board(engine, human)
    assert "Kendall's τ" in text


def test_heatmap_shows_numbers_and_marks_pairs_that_never_met():
    heatmap = win_rate_heatmap([("a", "b", "A"), ("a", "b", "tie"), ("b", "c", "B")])
    trace = heatmap.data[0]
    assert trace.texttemplate == "%{text}"
    cells = dict(zip(trace.y, trace.text, strict=True))
    assert list(trace.x) == ["a", "b", "c"]
    assert list(cells["a"]) == ["", "0.75", "–"]  # a and c never met: no 0.5, no colour
    assert trace.z[0][2] is None and trace.z[0][1] == pytest.approx(0.75)


def test_summary_counts_dropped_votes_and_sources(engine):
    for n in range(4):
        _vote(engine, n, "x", "y", "A")
    _vote(engine, 10, "x", "y", "B", flags=[IDENTITY_LEAK])
    _vote(engine, 11, "kbrd", "unicrs", "A", source="crsarena-dial")
    _vote(engine, 12, "sim-a", "sim-b", "A", source="simulated")
    table, _, _, summary = leaderboard(engine)
    assert summary.startswith("5 blind votes.")
    assert "live arena votes: 5" in summary and "imported (crsarena-dial): 1" in summary
    assert "1 where a reply named its own model" in summary
    assert set(table["model"]) == {"x", "y", "kbrd", "unicrs"}
    only_sim, *_ = leaderboard(engine, sources=["simulated"])
    assert set(only_sim["model"]) == {"sim-a", "sim-b"}
    empty, chart, heatmap, message = leaderboard(engine, sources=[])
    assert empty.empty and chart is None and "Pick at least one source" in message


def test_style_control_option_adjusts_the_ratings(engine):
    # x always answers at length and always wins; between y and z the longer reply wins too.
    n = 0
    for _ in range(15):
        for a, b, words in (("x", "y", (60, 10)), ("x", "z", (60, 10))):
            _vote(engine, n, a, b, "A", words)
            n += 1
        _vote(engine, n, "y", "z", "A", (30, 10))
        _vote(engine, n + 1, "z", "y", "A", (30, 10))
        n += 2
    plain, *_ = leaderboard(engine)
    styled, _, _, summary = leaderboard(engine, style_control=True)
    lead = {
        name: frame.set_index("model")["rating"].pipe(lambda r: r["x"] - (r["y"] + r["z"]) / 2)
        for name, frame in (("plain", plain), ("styled", styled))
    }
    assert lead["plain"] > 300 and abs(lead["styled"]) < lead["plain"] / 3
    assert "Style control on" in summary
    assert isinstance(styled, pd.DataFrame)
