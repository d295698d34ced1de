"""Arena votes beyond recording them: pair selection, style control, hygiene, per-turn records."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from backend.types import Dialogue, Turn
from db.arena import list_votes, record_vote, stored_battles, votes_to_battles, votes_to_style
from db.arena_pairing import draw_pair, pair_weights
from db.ranking import fit_bradley_terry, style_covariates
from db.schema import ArenaVote
from db.session import init_db
from db.turn_stats import turn_record
from db.vote_hygiene import (
    IDENTITY_LEAK,
    cap_reached,
    check_voters,
    clean_votes,
    leaked_names,
)


@pytest.fixture
def engine(tmp_path):
    return init_db(f"sqlite:///{tmp_path / 'arena.sqlite'}")


def _conv(text: str = "yo", items: list[str] | None = None) -> Dialogue:
    return Dialogue(
        id="c",
        turns=[Turn(role="user", text="hi"), Turn(role="system", text=text, items=items or [])],
    )


def _store(engine, round_id: str, a: str, b: str, vote: str = "A", **extra) -> ArenaVote:
    return record_vote(
        engine,
        round_id=round_id,
        model_a=a,
        model_b=b,
        left_model=a,
        vote=vote,
        conversation_a=extra.pop("conversation_a", _conv()),
        conversation_b=extra.pop("conversation_b", _conv()),
        **extra,
    )


# --- pair selection ----------------------------------------------------------------------------


def test_pairs_with_fewer_stored_battles_are_drawn_more_often(engine):
    for n in range(50):
        _store(engine, f"ab{n}", "a", "b", "A" if n % 2 else "B")
    battles = stored_battles(engine)  # read back from the database: survives a restart
    assert len(battles) == 50
    rng = random.Random(7)
    draws = [draw_pair(["a", "b", "c"], rng, battles) for _ in range(3000)]
    pairs = Counter(tuple(sorted(d)) for d in draws)
    assert pairs[("a", "c")] > 4 * pairs[("a", "b")]
    assert ("a", "c") in draws and ("c", "a") in draws  # sides are still random
    weights = pair_weights(["a", "b", "c"], battles)
    assert weights[("a", "c")] == weights[("b", "c")] > weights[("a", "b")]


def test_close_pairs_weigh_more_than_settled_ones():
    battles = [("a", "b", "A")] * 20 + [("a", "c", "A"), ("a", "c", "B")] * 10
    weights = pair_weights(["a", "b", "c"], battles)
    assert weights[("a", "c")] > weights[("a", "b")]  # same battle count, a coin flip wins


def test_draw_pair_needs_two_models():
    with pytest.raises(ValueError, match="two available models"):
        draw_pair(["a", "a"], random.Random(0))


# --- style control -----------------------------------------------------------------------------


def _style_battles(seed: int = 0):
    """X always writes the longer reply, and the longer reply always wins, at any skill."""
    rng = np.random.default_rng(seed)
    battles, len_a, len_b = [], [], []
    for _ in range(600):
        a, b = rng.choice(["X", "Y", "Z"], size=2, replace=False)
        la = 200 if a == "X" else rng.integers(20, 180)
        lb = 200 if b == "X" else rng.integers(20, 180)
        battles.append((str(a), str(b), "A" if la > lb else "B"))
        len_a.append((la, 5))
        len_b.append((lb, 5))
    return battles, style_covariates(np.array(len_a), np.array(len_b))


def test_style_control_removes_the_advantage_of_longer_replies():
    battles, style = _style_battles()
    plain = fit_bradley_terry(battles, l2=0.1)
    controlled = fit_bradley_terry(battles, l2=0.1, style=style)
    lead_plain = plain["X"] - (plain["Y"] + plain["Z"]) / 2
    lead_controlled = controlled["X"] - (controlled["Y"] + controlled["Z"]) / 2
    assert lead_plain > 500
    assert abs(lead_controlled) < 25


def test_style_covariates_flip_with_the_sides_and_need_one_row_per_battle():
    a, b = np.array([[30.0, 2.0], [0.0, 0.0]]), np.array([[10.0, 2.0], [0.0, 0.0]])
    forward, backward = style_covariates(a, b), style_covariates(b, a)
    assert np.allclose(forward, -backward) and forward[0, 0] > 0 and forward[1, 0] == 0
    with pytest.raises(ValueError, match="one row of covariates per battle"):
        fit_bradley_terry([("x", "y", "A")], style=np.zeros((2, 2)))


def test_votes_to_style_counts_words_and_distinct_items(engine):
    vote = _store(
        engine,
        "r",
        "a",
        "b",
        conversation_a=_conv("one two three", ["1", "2", "1"]),
        conversation_b=_conv("one", []),
    )
    counts_a, counts_b = votes_to_style([vote])
    assert counts_a.tolist() == [[3, 2]] and counts_b.tolist() == [[1, 0]]


# --- hygiene -----------------------------------------------------------------------------------


def test_daily_cap_counts_a_voters_votes_of_the_last_24_hours(engine):
    now = datetime(2025, 6, 1, 12, tzinfo=UTC)
    _store(engine, "old", "a", "b", session_id="s", voted_at=now - timedelta(hours=25))
    _store(engine, "new1", "a", "b", session_id="s", voted_at=now - timedelta(hours=2))
    _store(engine, "other", "a", "b", session_id="t", voted_at=now)
    assert not cap_reached(engine, "s", 2, now)
    _store(engine, "new2", "a", "b", session_id="s", voted_at=now - timedelta(hours=1))
    assert cap_reached(engine, "s", 2, now)


@pytest.mark.parametrize(
    ("text", "names", "leaked"),
    [
        ("As LLM-Rec I suggest Heat.", ["llm_rec"], ["llm_rec"]),
        ("I am the Popularity model.", ["popularity", "pop"], ["popularity"]),
        ("These are popular picks.", ["popularity"], []),
        ("Try Heat (1995).", ["retrieval"], []),
        ("SmolLM2-135M here", ["HuggingFaceTB/SmolLM2-135M", "smollm2-135m"], ["smollm2-135m"]),
    ],
)
def test_identity_leak_is_a_case_insensitive_word_match(text, names, leaked):
    assert leaked_names(text, names) == leaked


def _decisive(session: str, winner: str, loser: str, n: int, start: int = 0) -> list[ArenaVote]:
    return [
        ArenaVote(
            model_a=winner,
            model_b=loser,
            left_model=winner,
            vote="A",
            session_id=f"{session}",
            round_id=f"{session}-{start + i}",
            flags=[],
        )
        for i in range(n)
    ]


def _population() -> list[ArenaVote]:
    """Twenty ordinary voters who mostly agree that strong > mid > weak."""
    votes = []
    for voter in range(20):
        votes += _decisive(f"v{voter}", "strong", "weak", 4)
        votes += _decisive(f"v{voter}", "strong", "mid", 1, 10)
        votes += _decisive(f"v{voter}", "mid", "weak", 1, 20)
    return votes


def test_adversarial_voter_is_flagged_and_ordinary_voters_are_not():
    votes = _population() + _decisive("troll", "weak", "strong", 8)
    results = check_voters(votes, alpha=0.01)
    assert results["troll"].flagged and results["troll"].votes < 8
    assert not any(r.flagged for voter, r in results.items() if voter != "troll")
    cleaned = clean_votes(votes)
    assert cleaned.flagged_voters == ["troll"] and cleaned.flagged_votes == 8
    assert all(v.session_id != "troll" for v in cleaned.kept)


def test_leaked_votes_are_kept_out_of_the_fit(engine):
    _store(engine, "r1", "a", "b", "A", flags=[IDENTITY_LEAK])
    _store(engine, "r2", "a", "b", "B")
    votes = list_votes(engine)
    assert votes[0].flags == [IDENTITY_LEAK]
    cleaned = clean_votes(votes)
    assert cleaned.leaks == 1 and votes_to_battles(cleaned.kept) == [("a", "b", "B")]


# --- per-turn records --------------------------------------------------------------------------


def test_turn_record_rates():
    before = Dialogue(
        id="d",
        turns=[
            Turn(role="user", text="I loved Heat", items=["1"]),
            Turn(role="system", text="Try Alien", items=["4"]),
            Turn(role="user", text="more"),
        ],
    )
    known = {"1", "2", "4"}
    record = turn_record(
        before,
        "Try Heat, Alien, Toy Story or Toy Story",
        ["1", "4", "2", "2", "99"],
        latency_s=1.23456,
        model_s=0.5,
        tokens=12,
        is_known=lambda i: i in known,
    )
    assert record["turn"] == 3 and record["latency_s"] == 1.235 and record["words"] == 8
    assert record["items"] == ["1", "4", "2", "2", "99"]
    assert record["off_catalog_rate"] == pytest.approx(1 / 5)
    assert record["repeated_rate"] == pytest.approx(2 / 5)  # "4" said before, "2" twice
    assert record["already_mentioned_rate"] == pytest.approx(2 / 5)  # "1" by the user, "4"
    empty = turn_record(before, "Hello", [], latency_s=0.1)
    assert empty["off_catalog_rate"] is None and empty["repeated_rate"] is None


def test_turn_stats_flags_and_source_are_stored(engine):
    stats = {"a": [{"turn": 1, "latency_s": 0.2}], "b": [{"turn": 1, "latency_s": 0.3}]}
    _store(engine, "r", "a", "b", turn_stats=stats, flags=["x", "x"], source="simulated")
    (vote,) = list_votes(engine, sources=["simulated"])
    assert vote.turn_stats == stats and vote.flags == ["x"] and vote.source == "simulated"
    assert list_votes(engine, sources=["arena"]) == []
    with pytest.raises(ValueError, match="`source`"):
        _store(engine, "r2", "a", "b", source="elsewhere")


# --- migration 0003 ----------------------------------------------------------------------------


def test_upgrading_a_0002_database_keeps_its_votes_as_live_unflagged_ones(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from db.session import alembic_config, get_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = get_engine(url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(
            text(
                "INSERT INTO arena_votes (round_id, mode, model_a, model_a_version, model_b, "
                "model_b_version, left_model, vote, conversation_a, conversation_b, voted_at, "
                "session_id) VALUES ('r1', 'blind', 'a', '', 'b', '', 'a', 'A', '{}', '{}', "
                "'2026-11-01 00:00:00', 's1')"
            )
        )
    init_db(url)  # 0002 -> head with the vote in place
    (vote,) = list_votes(engine)
    assert (vote.source, vote.flags, vote.turn_stats) == ("arena", [], None)
    assert stored_battles(engine) == [("a", "b", "A")]
