"""The act check: the real MiniLM classifier, its training labels, and the simulator's guard."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from backend.acts import (
    ACTS,
    act_sample,
    get_act_check,
    intended_act,
    redial_examples,
    seed_examples,
)
from backend.data import load_dataset
from backend.simulator import Act, LLMSimulator
from backend.types import Dialogue, Reply, ScoredItem, Turn
from tests.conftest import Lines, make_items

HEAT = make_items()[0]


def test_the_real_check_tells_the_acts_apart_and_flags_off_act_lines():
    check = get_act_check()  # MiniLM + the head fitted on the seed, ReDial train, INSPIRED dev
    lines = {
        "Sounds great, I'll watch Heat (1995) tonight!": "accept",
        "No thanks, I've already seen that one.": "reject",
        "Can you recommend a funny movie from the eighties?": "request",
        "Thanks for all your help, goodbye!": "end",
    }
    assert check.predict(list(lines)) == list(lines.values())
    # Lines the 135M generator wrote for rejections and acceptances before the check existed.
    off = ["That was really helpful!", "I hope you're doing well. A new cat was spotted."]
    assert check.carries(off, ["reject", "accept"]) == [False, False]
    # Judged sentence by sentence: a rejection that then accepts does not carry its act.
    mixed = "No thanks, I didn't enjoy Tin Cup (1996). Great, I'll watch it tonight!"
    assert check.carries([mixed, mixed.split(". ")[0] + "."], ["reject", "reject"]) == [False, True]


def test_labels_come_from_goals_and_from_the_redial_questionnaire():
    assert intended_act(["reject_thanks", "reason_seen"]) == "reject"
    assert intended_act(["accept_thanks"]) == "accept"
    assert intended_act(["respond_simply", "ask_preference"]) is None
    assert {e.act for e in seed_examples()} == set(ACTS)
    dialogue = Dialogue(
        id="d",
        turns=[
            Turn(role="user", text="Hi"),
            Turn(role="system", text="Hello!"),
            Turn(role="user", text="I'm looking for a crime movie"),
            Turn(role="system", text="Have you seen Heat (1995)?", items=["1"]),
            Turn(role="user", text="No, but I will watch it"),
            Turn(role="system", text="Enjoy it"),
            Turn(role="user", text="Thanks, bye"),
        ],
        meta={"initiatorQuestions": {"1": {"suggested": 1, "seen": 0, "liked": 1}}},
    )
    labelled = {(e.text, e.act) for e in redial_examples([dialogue])}
    assert ("I'm looking for a crime movie", "request") in labelled  # not the bare "Hi"
    assert ("No, but I will watch it", "accept") in labelled
    assert ("Thanks, bye", "end") in labelled


def test_the_simulator_rewrites_a_line_that_misses_its_act():
    shown = Reply(
        text="Try these.",
        items=[ScoredItem(item_id="2", score=1.0, title="Toy Story")],
        recommends=True,
    )
    llm = Lines("I love this weather today.", "No, not those. I want a tense crime thriller.")
    said = LLMSimulator(llm, act_check=get_act_check().carries).utter(HEAT, shown, 1)
    assert said.act is Act.REJECT and said.act_rewrites == 1 and not said.fallback
    assert said.text.startswith("No, not those")


SAMPLE = Path(__file__).parent / "fixtures" / "acts" / "llm_redial_sample.jsonl"


def test_the_embedded_set_carries_its_acts_by_hand_and_the_check_agrees():
    """The committed sample is the seeded draw from the shipped llm-redial set (not picked by
    hand), labelled by reading each utterance: does it do what its goals say?"""
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    ds = load_dataset("llm-redial")
    dialogues = sorted((d for split in ds.splits.values() for d in split), key=lambda d: d.id)
    drawn = act_sample(dialogues, 50, seed=0)
    assert [(r["dialogue"], r["turn"], r["text"]) for r in rows] == [
        (d["dialogue"], d["turn"], d["text"]) for d in drawn
    ]
    assert mean(r["carries"] for r in rows) >= 0.9  # act consistency, checked by hand
    judged = get_act_check().carries([r["text"] for r in rows], [r["act"] for r in rows])
    assert mean(j == r["carries"] for j, r in zip(judged, rows, strict=True)) >= 0.8
