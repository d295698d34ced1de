"""The simulated user: acts chosen by rule, the leak guard, and episodes that hide the target."""

from __future__ import annotations

from pathlib import Path

from backend.eval.simulate import leak_rate, summary
from backend.registry import CRSModel
from backend.simulator import (
    Act,
    Episode,
    LLMSimulator,
    SimulatorConfig,
    TemplateSimulator,
    leaks,
    run_episode,
)
from backend.types import Dialogue, Item, Reply, ScoredItem, UserHistory
from tests.conftest import Lines, make_dataset, make_items

HEAT = make_items()[0]  # Heat (1995): Crime, Thriller; Michael Mann; Al Pacino


def test_the_leak_guard_catches_the_title_and_near_copies_only():
    assert leaks("Have you seen Heat? That one.", HEAT)
    assert not leaks("The heater broke, so I want something warm.", HEAT)
    ark = Item(id="9", title="Raiders of the Lost Ark", year=1981)
    assert leaks("something like raiders of the lost arc would be great", ark)
    assert not leaks("An adventure with a hero in a hat, please.", ark)


def test_a_leaking_utterance_is_written_again_and_then_replaced():
    llm = Lines("I want Heat, the one with Al Pacino.", "A tense crime film from the 90s, please.")
    said = LLMSimulator(llm).utter(HEAT, None, 0)
    assert said.act is Act.DESCRIBE and said.rewrites == 1 and not leaks(said.text, HEAT)
    assert "Heat" not in llm.prompts[0]  # the LLM is never told the title
    stubborn = LLMSimulator(Lines("Heat (1995), obviously.")).utter(HEAT, None, 0)
    assert stubborn.fallback and not leaks(stubborn.text, HEAT) and "crime" in stubborn.text


class Shows(CRSModel):
    """Shows the catalog in a fixed order, the target at system turn ``at`` (never when 0)."""

    name = "shows"
    description = "Test model that reveals a chosen item at a chosen turn."

    def __init__(self, dataset, target: str, at: int):
        super().__init__(dataset)
        self.target, self.at, self.seen = target, at, []

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        self.seen.append(dialogue)
        turn = len(self.seen)
        ids = [i for i in self.catalog.ids if i != self.target][:5]
        if turn == self.at:
            ids = [self.target, *ids[:4]]
        return Reply(
            text="How about these?",
            items=[ScoredItem(item_id=i, score=1.0, title=self.catalog[i].title) for i in ids],
            recommends=True,
            prompt_tokens=10 * turn,  # an LLM re-reading a growing context
            completion_tokens=2,
        )


def test_an_episode_ends_when_the_target_is_shown_and_no_model_call_sees_it():
    dataset = make_dataset()
    cfg = SimulatorConfig(max_turns=5)
    model = Shows(dataset, HEAT.id, at=3)
    episode = run_episode(model, TemplateSimulator(cfg), HEAT, cfg)
    assert episode.success_turn == 3 and episode.system_turns == 3
    acts = [t["act"] for t in episode.turns if t["role"] == "user"]
    assert acts == ["describe", "reject", "reject", "accept"]
    for dialogue in model.seen:  # the hidden target is in no context a model received
        assert HEAT.id not in str(dialogue.meta)
        assert not any(leaks(t.text, HEAT) for t in dialogue.turns if t.role == "user")
    never = run_episode(Shows(dataset, HEAT.id, at=0), TemplateSimulator(cfg), HEAT, cfg)
    assert never.success_turn is None and never.system_turns == 5
    assert never.turns[-1]["act"] == Act.QUIT
    # The tokens each model spent: (10 + 20 + 30) + 3 * 2 and (10 + ... + 50) + 5 * 2.
    figures = summary([episode, never], cfg)
    assert figures["tokens_per_episode"] == (66 + 160) / 2 and figures["AT"] == 4
    # Both conversations reach turn 3, where one finds the target; only the other goes on.
    assert [figures[f"recall@5_turn{t}"] for t in range(1, 6)] == [0, 0, 0.5, 0, 0]
    assert leak_rate([episode, never], dataset, cfg) == 0  # templates never name the target
    slipped = Episode(
        target=HEAT.id, turns=[{"role": "user", "text": "Heat, please."}, *never.turns]
    )
    assert leak_rate([slipped], dataset, cfg) == 1 / 7  # the one line of seven that names it


def test_the_local_smollm2_simulator_writes_a_line_without_the_title():
    from backend.llm import get_llm

    said = LLMSimulator(get_llm("smollm2", base_url="")).utter(HEAT, None, 0)
    assert said.text and not leaks(said.text, HEAT)


def test_crs_simulate_reports_success_and_turns_and_resumes(monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import backend.cli_common as common
    from backend.cli import app
    from backend.types import Interaction

    dataset = make_dataset()
    for u, liked in enumerate(["1", "3", "2", "4"]):  # each user's last like is their target
        dataset.histories[f"s{u}"] = UserHistory(
            user_id=f"s{u}",
            interactions=[
                Interaction(item_id="5", rating=2, time=1),
                Interaction(item_id=liked, rating=5, time=2),
            ],
        )
    monkeypatch.setattr(common, "load_dataset", lambda name, data_dir=None: dataset)
    out = tmp_path / "sim.json"
    args = ["simulate", "popularity", "--n", "4", "--simulator", "template", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [figures] = json.loads(out.read_text())
    assert figures["episodes"] == 4 and 0 <= figures["S@1"] <= figures["S@3"] <= figures["S@5"] <= 1
    assert 1 <= figures["AT"] <= 5 and figures["leak_rate"] == 0
    transcripts = Path(figures["transcripts"])
    episodes = [json.loads(line) for line in transcripts.read_text().splitlines()[1:]]
    assert len(episodes) == 4 and all(e["turns"][0]["act"] == "describe" for e in episodes)
    again = CliRunner().invoke(app, args)  # everything is in the transcripts: nothing reruns
    assert again.exit_code == 0 and json.loads(out.read_text()) == [figures]

    # MODEL.KEY=VALUE reaches that model only; a model not simulated is a clear error.
    scoped = ["simulate", "popularity,retrieval", "--n", "1", "--simulator", "template"]
    result = CliRunner().invoke(app, [*scoped, "--set", "popularity.top_k=7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    configs = [
        json.loads(Path(f["transcripts"]).read_text().splitlines()[0])["settings"]["config"]
        for f in json.loads(out.read_text())
    ]
    assert configs[0]["top_k"] == 7 and configs[1]["top_k"] != 7
    wrong = CliRunner().invoke(app, [*scoped, "--set", "pecrs.generate=false"])
    assert wrong.exit_code == 2 and "pecrs" in wrong.output


def test_template_lines_read_as_one_noun_phrase_genres_first():
    import random

    from backend.simulator import template

    rng = random.Random(0)
    for _ in range(5):  # the decade and the person come in either order, never before the genre
        line = template(Act.DESCRIBE, HEAT, rng)
        assert line.startswith("I'm looking for a crime and thriller movie ") and "1990s" in line
    toon = Item(id="7", title="Paprika", year=2006, genres=("Animation",))
    assert (
        template(Act.REJECT, toon, rng)
        == "Not those, thanks. I want an animation movie from the 2000s."
    )
    assert template(Act.ANSWER, Item(id="8", title="Untitled"), rng) == "I'd like a good movie."
