"""The Arena tab's actions without a browser: cancel, failed messages, status lines, hygiene."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter

import pytest

from app.arena import VOTED, Arena, ArenaRules
from backend.client import (
    OUTAGE_MESSAGE,
    BackendUnavailableError,
    ModelError,
    RequestError,
)
from backend.server import Health, ModelInfo
from backend.types import Dialogue, Reply, ScoredItem
from db.arena import list_votes, record_vote
from db.session import init_db


class FakeClient:
    """Stands in for BackendClient: scripted replies, records what each model was sent."""

    def __init__(self, models=("alpha", "beta"), max_chars=2000, max_turns=60):
        self.names = list(models)
        self.sent: list[tuple[str, list[str]]] = []
        self.gate: threading.Event | None = None  # when set, streams wait on it between deltas
        self.fail: dict[str, Exception] = {}
        self.texts: dict[str, str] = {}
        self.down = False
        self.limits = Health(
            status="ok", dataset="t", models={}, max_message_chars=max_chars, max_turns=max_turns
        )

    def models(self):
        if self.down:
            raise BackendUnavailableError(
                "the CRS backend at http://x is not reachable; start it with `crs serve ...`"
            )
        return [
            ModelInfo(
                name=n, model=f"{n}-reg", description="", device="cpu", version="1", status="ready"
            )
            for n in self.names
        ]

    def health(self):
        return self.limits

    def item(self, item_id):
        if item_id == "404":
            raise RequestError(404, "not in the catalog")
        return None

    def stream(self, name, dialogue, user_id=None):
        self.sent.append((name, [t.text for t in dialogue.turns]))
        if name in self.fail:
            raise self.fail[name]
        yield "Try "
        if self.gate is not None:
            assert self.gate.wait(5)
        text = self.texts.get(name, f"Try Heat, says a model ({len(dialogue.turns)}).")
        yield Reply(
            text=text,
            items=[ScoredItem(item_id=i, score=1.0) for i in ("1", "404")],
            model=name,
            seconds=0.01,
        )


@pytest.fixture
def engine(tmp_path):
    return init_db(f"sqlite:///{tmp_path / 'arena.sqlite'}")


def _arena(engine, client=None, **rules):
    return Arena(client or FakeClient(), engine, ArenaRules(**rules), random.Random(0))


def _send(arena, round_, message, mode="blind"):
    *_, last = arena.send(round_, message, mode, None, None)
    return last


def test_new_round_cancels_replies_in_flight_and_forgets_their_context(engine):
    client = FakeClient()
    client.gate = threading.Event()
    arena = _arena(engine, client)
    steps = arena.send(None, "old question", "blind", None, None)
    round_, status, box = next(steps)
    assert status == "Both models are answering…" and box == ""
    next(steps)  # a first delta has arrived; both streams now wait on the gate
    assert arena.new_round(round_) == (None, "New round: send a message.")
    client.gate.set()
    assert list(steps) == []  # the old round never redraws the page again
    client.gate = None
    new, status, _ = _send(arena, None, "new question")
    assert new is not round_ and status == "Vote when ready."
    assert all(turns == ["new question"] for _, turns in client.sent[-2:])


def test_a_rejected_message_leaves_the_round_and_keeps_the_text(engine):
    client = FakeClient()
    arena = _arena(engine, client)
    round_, _, _ = _send(arena, None, "first")
    client.fail = {
        n: RequestError(413, "Message too long: 2,000 characters at most (got 2,345)")
        for n in ("alpha", "beta")
    }
    round_, status, box = _send(arena, round_, "too long")
    assert status.startswith("Both models failed: Message too long: 2,000 characters at most.")
    assert box == "too long"  # put back in the box
    for side in round_.sides:
        assert [t.text for t in side.dialogue.turns][0] == "first"
        assert len(side.dialogue.turns) == 2 and not side.error and len(side.records) == 1
    assert round_.can_vote  # the first exchange can still be voted
    client.fail = {}
    round_, status, _ = _send(arena, round_, "shorter")
    assert status == "Vote when ready." and len(round_.left.dialogue.turns) == 4


def test_message_length_and_turn_limits_are_checked_before_sending(engine):
    client = FakeClient(max_chars=20, max_turns=2)
    arena = _arena(engine, client)
    round_, status, box = _send(arena, None, "x" * 21)
    assert (round_, status, box) == (None, "Message too long: 20 characters at most.", None)
    assert client.sent == []
    round_, _, _ = _send(arena, None, "hello")
    _, status, _ = _send(arena, round_, "again")
    assert "length limit" in status and len(client.sent) == 2


def test_status_lines_tell_the_truth_after_failures_and_votes(engine):
    client = FakeClient()
    arena = _arena(engine, client)
    assert list(arena.regenerate(None))[-1][1].startswith("Nothing to regenerate yet")
    round_, _, _ = _send(arena, None, "hi")
    client.fail = {n: ModelError("boom", 500) for n in ("alpha", "beta")}
    *_, (round_, status) = arena.regenerate(round_)
    assert status.startswith("Both models failed: The model could not answer this time.")
    assert "Vote when ready" not in status and not round_.can_vote
    client.fail = {}
    *_, (round_, status) = arena.regenerate(round_)
    assert status == "Vote when ready." and round_.can_vote
    round_, status = arena.vote(round_, "A", "browser-1")
    assert status.startswith("Thanks!")
    assert list(arena.regenerate(round_)) == [(round_, VOTED)]
    assert arena.vote(round_, "B", "browser-1")[1] == VOTED


def test_backend_outage_reads_plainly_and_logs_the_command(engine, caplog):
    client = FakeClient()
    client.down = True
    with caplog.at_level(logging.WARNING, logger="app.arena"):
        round_, status, _ = _send(_arena(engine, client), None, "hi")
    assert (round_, status) == (None, OUTAGE_MESSAGE)
    assert "crs serve" in caplog.text and "crs serve" not in status


def test_voting_opens_after_the_minimum_number_of_user_turns(engine):
    arena = _arena(engine, min_user_turns=3)
    round_, status, _ = _send(arena, None, "one")
    assert status == "Keep chatting: 2 more messages before you can vote."
    assert not round_.can_vote
    assert arena.vote(round_, "A", "b1")[1] == status
    round_, status, _ = _send(arena, round_, "two")
    assert status == "Keep chatting: 1 more message before you can vote."
    round_, status, _ = _send(arena, round_, "three")
    assert status == "Vote when ready." and round_.can_vote


def test_daily_vote_cap_refuses_in_plain_words(engine):
    arena = _arena(engine, daily_vote_cap=1)
    first, _, _ = _send(arena, None, "hi")
    assert arena.vote(first, "A", "browser-1")[1].startswith("Thanks!")
    second, _, _ = _send(arena, first, "again")  # a voted round: this starts a new one
    assert second is not first
    _, status = arena.vote(second, "A", "browser-1")
    assert "1 vote in the last 24 hours" in status and second.vote is None
    assert arena.vote(second, "B", "browser-2")[1].startswith("Thanks!")


def test_votes_store_turn_records_and_identity_leaks(engine):
    client = FakeClient()
    client.texts = {"alpha": "I am Alpha-Reg, try Heat."}
    arena = _arena(engine, client)
    round_, _, _ = _send(arena, None, "hi")
    arena.vote(round_, "tie", "b1")
    (vote,) = list_votes(engine)
    assert vote.flags == ["identity_leak"]
    record = vote.turn_stats["a"][0]
    assert record["items"] == ["1", "404"] and record["off_catalog_rate"] == 0.5
    assert record["latency_s"] >= 0 and record["words"] > 0 and record["turn"] == 1


def test_blind_rounds_draw_rarely_met_pairs_from_the_database(engine):
    conv = Dialogue(id="c")
    for n in range(50):
        record_vote(
            engine,
            round_id=f"r{n}",
            model_a="alpha",
            model_b="beta",
            left_model="alpha",
            vote="A",
            conversation_a=conv,
            conversation_b=conv,
        )
    arena = _arena(engine, FakeClient(models=("alpha", "beta", "gamma")))
    pairs = Counter()
    for _ in range(300):
        round_, _, _ = next(arena.send(None, "hi", "blind", None, None))
        pairs[frozenset((round_.left.model, round_.right.model))] += 1
    assert pairs[frozenset(("alpha", "beta"))] * 4 < pairs[frozenset(("alpha", "gamma"))]
