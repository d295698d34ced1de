"""The Gradio demo in process: API via gradio_client, round logic, leaderboard, cards, backend down."""

from __future__ import annotations

import random
import re
import socket
from datetime import UTC, datetime

import pytest

from app.arena import ArenaRound, Side, draw_pair
from app.cards import chat_messages, item_cards
from app.leaderboard import leaderboard
from app.main import build_demo, chat_turn, model_states, too_long
from backend.client import BackendClient
from backend.server import ServerConfig, start_in_thread
from backend.types import Dialogue, Item, Reply, ScoredItem, Turn
from db.arena import AlreadyVoted, list_votes, record_vote
from db.session import init_db

CONFIG = {"dataset": "movielens-100k", "models": [{"name": "popularity"}, {"name": "retrieval"}]}


@pytest.fixture(scope="module")
def backend():
    url, stop = start_in_thread(ServerConfig.model_validate(CONFIG))
    yield url
    stop()


@pytest.fixture
def engine(tmp_path):
    return init_db(f"sqlite:///{tmp_path / 'arena.sqlite'}")


def test_gradio_client_chat_turn_returns_catalog_items(backend, engine):
    from gradio_client import Client

    from backend.data import load_dataset

    demo = build_demo(BackendClient(backend), engine)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        messages, cards, _chart, trace, status, box = Client(url, verbose=False).predict(
            "Something like Alien (1979) please", "retrieval", "", api_name="/chat"
        )
    finally:
        demo.close()
    ids = re.findall(r'data-item-id="([^"]+)"', cards)
    catalog = load_dataset("movielens-100k").catalog
    assert ids and all(i in catalog for i in ids)
    assert catalog.match("Alien (1979)") not in ids  # the title the user typed counts as mentioned
    assert messages[-1]["role"] == "assistant" and status == "" and box == ""
    assert "query" in trace


def test_a_refused_message_leaves_the_chat_and_is_said_plainly(tiny_dataset):
    """Defect: an over-long message stayed in the dialogue, so every later message got 413 too,
    and the visitor read "RequestError: 413: turn 0 (user) ..."."""
    config = ServerConfig.model_validate(
        {"dataset": "tiny", "models": [{"name": "popularity"}], "max_message_chars": 50}
    )
    url, stop = start_in_thread(config, dataset=tiny_dataset)
    try:
        client = BackendClient(url)
        dialogue = Dialogue(id="chat")
        *_, (_, after, reply, status) = chat_turn(client, "popularity", "x" * 60, dialogue, None)
        assert reply is None and after.turns == []
        assert status == "**Message too long: 50 characters at most.**"
        assert too_long(client, "y" * 51).startswith("**Message too long: 50 characters at most**")
        *_, (_, after, reply, status) = chat_turn(client, "popularity", "hi", dialogue, None)
        assert reply is not None and status == "" and len(after.turns) == 2
    finally:
        stop()


def test_user_and_model_html_is_shown_as_text():
    dialogue = Dialogue(
        id="c",
        turns=[
            Turn(role="user", text="<img src=x onerror=alert(1)> hi"),
            Turn(role="system", text="You said <img src=x onerror=alert(1)>"),
        ],
    )
    shown = chat_messages(dialogue)
    assert all("<img" not in m["content"] and "&lt;img" in m["content"] for m in shown)


def test_model_states_say_what_is_on_its_way():
    from backend.server import ModelInfo

    def info(name, status, **kw):
        return ModelInfo(
            name=name, model=name, description="", device="cpu", version="", status=status, **kw
        )

    text = model_states(
        [
            info("a", "ready"),
            info("b", "training", progress={"done": 45, "total": 100, "eta_s": 130}),
            info("c", "queued"),
            info("d", "error", error="training failed: out of memory"),
        ]
    )
    assert "**a**" not in text
    assert "**b**: training 45 %, about 2 min left" in text
    assert "**c**: waiting to be trained" in text
    assert "**d**: unavailable: training failed: out of memory" in text
    assert model_states([info("a", "ready")]) == ""


def test_cards_escape_untrusted_text():
    reply = Reply(text="x", items=[ScoredItem(item_id="1", score=0.5, title="<b>t</b>")])
    html = item_cards(
        reply, {"1": Item(id="1", title="<script>alert(1)</script>", description="a & b")}
    )
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html


def test_blind_pairs_are_two_different_models_on_random_sides():
    rng = random.Random(0)
    pairs = {draw_pair(["a", "b", "c"], rng) for _ in range(200)}
    assert all(left != right for left, right in pairs)
    assert ("a", "b") in pairs and ("b", "a") in pairs  # both sides happen
    with pytest.raises(ValueError, match="two available models"):
        draw_pair(["a"], rng)


def test_round_reveals_names_only_after_the_single_allowed_vote(engine):
    round_ = ArenaRound(left=Side(model="popularity"), right=Side(model="retrieval"), mode="blind")
    assert round_.labels() == ("Model A", "Model B") and not round_.can_vote
    for side in (round_.left, round_.right):
        side.dialogue = Dialogue(
            id="r", turns=[Turn(role="user", text="hi"), Turn(role="system", text="yo")]
        )
        side.done = True
    assert round_.can_vote
    round_.cast(engine, "B")
    assert round_.labels() == ("Model A: popularity", "Model B: retrieval")
    with pytest.raises(ValueError, match="already voted"):
        round_.cast(engine, "A")
    round_.vote = None  # even if the page lost its state, the database refuses a second vote
    with pytest.raises(AlreadyVoted):
        round_.cast(engine, "A")
    (vote,) = list_votes(engine)
    assert (vote.vote, vote.left_model, vote.mode) == ("B", "popularity", "blind")


def test_a_failed_side_cannot_be_voted():
    round_ = ArenaRound(
        left=Side(model="a", done=True), right=Side(model="b", done=True, error="boom")
    )
    round_.left.dialogue.turns.append(Turn(role="user", text="hi"))
    assert not round_.can_vote


def test_leaderboard_uses_blind_votes_only(engine):
    assert leaderboard(engine)[0].empty
    conv = Dialogue(id="c", turns=[Turn(role="user", text="hi"), Turn(role="system", text="yo")])
    for i, (vote, mode) in enumerate(
        [("A", "blind"), ("A", "blind"), ("B", "blind"), ("B", "named")]
    ):
        record_vote(
            engine,
            round_id=f"r{i}",
            model_a="x",
            model_b="y",
            left_model="x",
            vote=vote,
            conversation_a=conv,
            conversation_b=conv,
            mode=mode,
            started_at=datetime.now(UTC),
        )
    table, chart, heatmap, summary = leaderboard(engine)
    assert summary.startswith("3 blind votes.") and "provisional" in summary
    assert list(table["model"]) == ["x", "y"] and table["votes"].tolist() == [3, 3]
    assert 1000 < table["rating"][0] < 1400  # 2 wins of 3: ahead, and the prior keeps it finite
    assert chart is not None and heatmap is not None


def test_backend_down_gives_a_clear_message_then_recovers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = BackendClient(f"http://127.0.0.1:{port}", timeout=5)
    dialogue = Dialogue(id="c")
    *_, (messages, dialogue, reply, error) = chat_turn(
        client, "popularity", "hello", dialogue, None
    )
    # A visitor reads a status; the command to start a backend goes to the log only.
    assert reply is None and dialogue.turns == []
    assert "not answering right now" in error and "crs serve" not in error
    url, stop = start_in_thread(
        ServerConfig.model_validate({**CONFIG, "models": [{"name": "popularity"}]}), port=port
    )
    try:
        *_, (messages, dialogue, reply, error) = chat_turn(
            client, "popularity", "hello", dialogue, None
        )
        assert reply is not None and reply.items and error == ""
    finally:
        stop()


def test_a_reset_waits_until_the_session_stops_streaming():
    """New chat / New round must not return while a reply could still redraw the old chat."""
    import copy
    import threading

    from app.in_flight import InFlight

    flight = copy.deepcopy(InFlight())  # as gr.State hands one to each session
    opened, release = threading.Event(), threading.Event()

    seen = []

    def reply():
        with flight.streaming() as stream:
            opened.set()
            release.wait(5)
            seen.append(stream.abandoned)  # the reply stops at its next step

    worker = threading.Thread(target=reply)
    worker.start()
    opened.wait(5)
    assert not flight.reset(None, timeout=0.2)  # still streaming: the reset keeps waiting
    release.set()
    assert flight.reset(None, timeout=5)
    worker.join()
    assert seen == [True]


def test_a_send_clicked_before_the_last_reset_is_dropped():
    """Gradio may start a send after a New chat clicked later; that send belongs to the old chat."""
    from app.in_flight import InFlight

    flight = InFlight()
    with flight.streaming(1_000.0) as stream:
        assert not stream.abandoned
    flight.reset(2_000.0)
    for clicked_at, dropped in [(1_999.0, True), (2_001.0, False), (None, False)]:
        with flight.streaming(clicked_at) as stream:  # None: API callers send no click time
            assert stream.abandoned is dropped
