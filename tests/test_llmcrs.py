"""LLMCRS (issue 16): reading the LLM's decisions, the expert registry, the four traced stages."""

from __future__ import annotations

import json

import pytest

import backend.models.llmcrs.model as llmcrs_model
from backend.models.llmcrs.choice import Chooser, parse_answer
from backend.models.llmcrs.config import SUBTASK
from backend.models.llmcrs.labels import gold_subtask, silver_subtask
from backend.models.llmcrs.prompts import BUILTIN_DEMOS, detection_prompt, draw_demos
from backend.registry import _REGISTRY, CRSModel, create_model, register
from backend.types import Dialogue, Reply, ScoredItem, Turn
from tests.conftest import ChatOnlyLLM, make_dataset


class Script(ChatOnlyLLM):
    """Answers with its lines in order (the last one repeats), continuing any forced prefix;
    scores an option by a fixed table (0 when absent); keeps every prompt."""

    name = "script"

    def __init__(self, *lines: str, scores: dict[str, float] | None = None):
        super().__init__()
        self.lines, self.prompts, self.table = list(lines), [], scores or {}

    def chat_batch(self, conversations, config=None, prefixes=None):
        self.prompts += [c[-1]["content"] for c in conversations]
        prefixes = prefixes or [""] * len(conversations)
        said = [self.lines.pop(0) if len(self.lines) > 1 else self.lines[0] for _ in conversations]
        return [p + s for p, s in zip(prefixes, said, strict=True)]

    def score_options(self, prompt, continuations, mean=False):
        self.prompts.append(prompt)
        # The context-free prior is 0, so the table alone decides.
        return [0.0 if "N/A" in prompt else self.table.get(c.strip(), 0.0) for c in continuations]


POPULAR = {"experts": "popularity", "single_expert": "popularity"}


def llmcrs(dataset, llm, monkeypatch, **config):
    monkeypatch.setattr(llmcrs_model, "get_llm", lambda *a, **k: llm)
    settings = {"experts": "popularity", "single_expert": "popularity", **config}
    return create_model("llmcrs", dataset, settings)


def ask(text: str) -> Dialogue:
    return Dialogue(id="d", turns=[Turn(role="user", text=text)])


def test_answers_are_parsed_as_json_or_text_and_nonsense_names_nothing():
    options = {"recommend": "Recommendation", "elicit": "User Preference Elicitation"}
    assert parse_answer('{"name": "Recommendation"}', options) == "recommend"
    assert parse_answer('Sure! {"name": "user preference elicitation"}', options) == "elicit"
    assert parse_answer("Recomendation", options) == "recommend"  # a typo still matches
    assert parse_answer("I think we should chat about the weather", options) is None


def test_an_invalid_answer_falls_back_to_the_default_and_is_counted(tiny_dataset, monkeypatch):
    model = llmcrs(tiny_dataset, Script("no json here", "fine."), monkeypatch, choice="json")
    reply = model.respond(ask("Hello there"))
    detection = reply.trace[0]
    assert detection.name == "1 sub-task detection → Recommendation"  # the default
    assert detection.output["valid"] is False and detection.output["raw"] == "no json here"
    assert model.counts["detection: invalid answer, default taken"] == 1
    assert reply.items and reply.items[0].title in reply.text


def test_scoring_takes_the_likeliest_option_and_every_turn_has_four_stages(
    tiny_dataset, monkeypatch
):
    llm = Script("", scores={"User Preference Elicitation": 2.0, "Recommendation": 1.0})
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="score")
    reply = model.respond(ask("Hi, I want to watch something."))
    names = [step.name.split(" → ")[0] for step in reply.trace]
    assert names == ["1 sub-task detection", "2 model matching", "3 execution", "4 response"]
    assert reply.trace[0].name.endswith("User Preference Elicitation")
    assert "?" in reply.text and not reply.recommends  # it asks, and still shows films
    assert reply.items and reply.items[0].title in reply.text


def test_a_newly_registered_expert_enters_the_matching_prompt_and_can_be_chosen(
    tiny_dataset, monkeypatch
):
    @register
    class Oracle(CRSModel):
        name = "oracle-expert"
        description = "Knows exactly which crime film the user wants."

        def respond(self, dialogue, history=None):
            item = self.catalog["1"]
            return Reply(
                text="", items=[ScoredItem(item_id="1", score=1.0, title=item.display_title)]
            )

    try:
        llm = Script('{"name": "Recommendation"}', '{"name": "oracle-expert"}', "Enjoy.")
        model = llmcrs(tiny_dataset, llm, monkeypatch, choice="json", experts="")
        reply = model.respond(ask("A crime film, please."))
        matching = next(p for p in llm.prompts if "expert model" in p)
        assert "[oracle-expert, Knows exactly which crime film the user wants.]" in matching
        assert reply.trace[1].name == "2 model matching → oracle-expert"
        assert reply.trace[2].name == "3 execution → oracle-expert"
        assert reply.items[0].item_id == "1" and "Heat (1995)" in reply.text
    finally:
        _REGISTRY.pop("oracle-expert")


def test_an_expert_that_cannot_run_hands_over_to_the_next(tiny_dataset, monkeypatch):
    llm = Script('{"name": "Recommendation"}', '{"name": "sasrec"}', "Enjoy.")
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="json", experts="sasrec,popularity")
    reply = model.respond(ask("Something good?"))  # sasrec has no checkpoint here
    executed = reply.trace[2]
    assert executed.input["recommender"] == "popularity (loaded here)"
    assert "sasrec" in executed.input["skipped"] and reply.items


def test_without_management_every_turn_is_the_single_experts_recommendation(
    tiny_dataset, monkeypatch
):
    llm = Script("unused", "Enjoy.")
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="json", manage=False)
    reply = model.respond(ask("Who directed Heat?"))
    assert reply.recommends and reply.trace[0].name.endswith("Recommendation")
    assert not any("sub-task should be selected" in p for p in llm.prompts)


def test_detection_prompt_ablations_drop_the_schema_and_the_demonstrations(tiny_dataset):
    from backend.models.llmcrs.config import LLMCRSConfig

    dialogue = ask("Any thrillers?")
    full = detection_prompt(dialogue, BUILTIN_DEMOS, LLMCRSConfig())
    assert '"output": "Item"' in full and "cases for your reference" in full
    no_schema = detection_prompt(dialogue, BUILTIN_DEMOS, LLMCRSConfig(schema=False))
    assert '"output"' not in no_schema and "Recommendation" in no_schema
    assert "cases for your reference" not in detection_prompt(dialogue, [], LLMCRSConfig())
    assert full.endswith("Sub-task:")


def test_silver_and_gold_labels_of_system_turns():
    turns = [
        Turn(role="user", text="Hi, any comedies?"),
        Turn(role="system", text="What kind of comedy do you like?"),
        Turn(role="user", text="Silly ones."),
        Turn(role="system", text="Try Airplane! (1980).", items=["7"]),
        Turn(role="user", text="Who directed it?"),
        Turn(role="system", text="The Zucker brothers."),
        Turn(role="user", text="Nice."),
        Turn(role="system", text="It's one of the funniest films ever made."),
        Turn(role="user", text="Thanks, bye!"),
        Turn(role="system", text="Bye!"),
    ]
    dialogue = Dialogue(id="x", turns=turns)
    labels = [silver_subtask(dialogue, i) for i in range(len(turns))]
    assert labels == [
        None,
        "elicit",
        None,
        "recommend",
        None,
        "detail",
        None,
        "explain",
        None,
        None,
    ]
    goals = [
        [],
        ["ask_preference"],
        [],
        ["rec_might_likes"],
        [],
        ["respond_detail"],
        [],
        [],
        [],
        ["end"],
    ]
    gold = Dialogue(id="g", turns=turns, meta={"goals": goals})
    assert [gold_subtask(gold, i) for i in (1, 3, 5, 9)] == ["elicit", "recommend", "detail", None]


def test_demonstrations_come_from_training_dialogues_one_sub_task_after_another(tiny_dataset):
    demos = draw_demos(tiny_dataset.splits["train"], k=3, seed=0)
    assert demos and all(d.subtask in SUBTASK for d in demos)
    assert len({d.subtask for d in demos}) == min(3, len({d.subtask for d in demos}))
    assert draw_demos([], k=2, seed=0) == list(BUILTIN_DEMOS[:2])  # no dialogues: built-in
    assert draw_demos(tiny_dataset.splits["train"], k=0, seed=0) == []


def test_scoring_subtracts_what_an_option_scores_without_context():
    class Prior(Script):
        def score_options(self, prompt, continuations, mean=False):
            table = {"A": 5.0} if "N/A" in prompt else {"A": 4.0, "B": 1.0}  # A is likely anyway
            return [table.get(c.strip(), 0.0) for c in continuations]

    options = {"a": "A", "b": "B"}
    choice = Chooser(Prior(""), "score").choose("Q\nLead:", "Lead:", options, "a", "N/A\nLead:")
    assert choice.decision == "b" and choice.scores == {"a": -1.0, "b": 1.0}


@pytest.mark.parametrize("bad", [{"choice": "guess"}, {"default_subtask": "chat"}])
def test_bad_settings_are_refused_in_plain_words(tiny_dataset, bad):
    with pytest.raises(ValueError, match="llmcrs:"):
        create_model("llmcrs", tiny_dataset, bad)


def test_the_local_reply_keeps_the_experts_words_and_only_a_checked_sentence(
    tiny_dataset, monkeypatch
):
    """The grounded path: the LLM's added sentence goes when it narrates the task."""
    llm = Script('{"name": "Recommendation"}', " The user's request is a crime film.")
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="json", local_clause=True)
    reply = model.respond(ask("A crime film, please."))
    assert "user's request" not in reply.text and reply.items[0].title in reply.text
    assert "talks about the user" in reply.trace[3].output["refused"]


def labelled_dataset():
    """The tiny catalog with dialogues whose system turns cover the four sub-tasks."""
    from tests.conftest import make_dataset

    dataset = make_dataset()
    turns = [
        Turn(role="user", text="Hi, any movies?"),
        Turn(role="system", text="What kind of movie do you like?"),
        Turn(role="user", text="Crime."),
        Turn(role="system", text="Try Heat (1995).", items=["1"]),
        Turn(role="user", text="Who directed it?"),
        Turn(role="system", text="Michael Mann."),
        Turn(role="user", text="Cool."),
        Turn(role="system", text="It's a great heist film."),
    ]
    dialogues = [Dialogue(id=f"t{n}", turns=turns) for n in range(3)]
    dataset.splits = {"train": dialogues, "dev": dialogues[:1]}
    return dataset


def test_the_detection_warm_start_resumes_to_the_same_adapter(tiny_llm_dir, tmp_path):
    """A run stopped after step 2 and started again ends where an unbroken run does."""
    import torch
    from safetensors.torch import load_file

    import backend.models.llmcrs.trainer as trainer
    from backend.models.llmcrs.config import LLMCRSConfig

    dataset = labelled_dataset()
    dataset.splits.pop("dev")  # no dev turns: the last adapter is kept
    cfg = LLMCRSConfig(llm=str(tiny_llm_dir), device="cpu", demos=2)
    settings = trainer.TrainSettings(steps=4, batch_size=2, lr=1e-2, eval_every=4, save_every=2)
    whole = trainer.train_llmcrs(dataset, cfg, settings, tmp_path / "whole")

    class Stop(Exception):
        pass

    scores, calls = trainer.Detector.scores, []

    def stop_in_step_three(self, context):
        calls.append(1)
        if len(calls) > 2 * settings.batch_size:  # two steps of two turns each
            raise Stop
        return scores(self, context)

    trainer.Detector.scores = stop_in_step_three
    try:
        with pytest.raises(Stop):
            trainer.train_llmcrs(dataset, cfg, settings, tmp_path / "resumed")
    finally:
        trainer.Detector.scores = scores
    assert (tmp_path / "resumed" / "train_state.pt").is_file()
    resumed = trainer.train_llmcrs(dataset, cfg, settings, tmp_path / "resumed")
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert len(metrics["loss"]) == 4 and metrics["best_step"] == 4
    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it did train
    assert not (resumed / "train_state.pt").exists()


def test_a_trained_adapter_is_loaded_and_scores_uncalibrated(tiny_llm_dir, tmp_path, monkeypatch):
    from backend.models.llmcrs.config import LLMCRSConfig
    from backend.models.llmcrs.trainer import TrainSettings, train_llmcrs

    dataset = labelled_dataset()
    cfg = LLMCRSConfig(llm=str(tiny_llm_dir), device="cpu", demos=2)
    path = train_llmcrs(dataset, cfg, TrainSettings(steps=1, batch_size=2, eval_every=1))
    assert path.name == dataset.name
    model = create_model(
        "llmcrs", dataset, {"llm": str(tiny_llm_dir), "device": "cpu", "demos": 2, **POPULAR}
    )
    assert model.adapter == path and not model.calibrate
    reply = model.respond(ask("Any crime films?"))
    assert len(reply.trace) == 4 and reply.prompt_tokens > 0
    with pytest.raises(FileNotFoundError, match="crs train llmcrs --dataset tiny"):
        create_model("llmcrs", dataset, {"adapter": str(tmp_path / "nowhere"), **POPULAR})
    with pytest.raises(FileNotFoundError, match="crs train llmcrs --dataset llm-redial"):
        create_model("llmcrs", dataset, {"trained_on": "llm-redial", **POPULAR})


def test_served_it_matches_among_and_calls_the_servers_ready_models(tiny_dataset, monkeypatch):
    """With the server's peers, the experts are the served, ready models, answered there."""

    class Host:
        def __init__(self):
            self.calls = []

        def ready_models(self):
            return ["popularity"]

        def respond(self, name, dialogue, history):
            self.calls.append(name)
            return Reply(
                text="",
                items=[ScoredItem(item_id="3", score=1.0, title="The Usual Suspects (1995)")],
            )

    host = Host()
    llm = Script('{"name": "Recommendation"}', "Enjoy.")
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="json", experts="")
    model.use_peers(host)
    reply = model.respond(ask("A twisty crime film?"))
    assert host.calls == ["popularity"] and reply.items[0].item_id == "3"
    assert reply.trace[1].name == "2 model matching → popularity"  # the only one served
    assert reply.trace[2].input["recommender"] == "popularity (served)"


def test_an_rlpf_step_moves_only_lora_and_steps_raise_the_expected_reward(tiny_llm_dir):
    """REINFORCE (Eq. 5) on the tiny fixture: the base weights stay; recommending the gold film
    pays (HIT), and the policy learns it."""
    import random

    import torch

    from backend.llm import LocalLLM, with_lora
    from backend.models.llmcrs.rlpf import Policy, RLPFRun, RLPFSettings, episodes, rlpf_step

    torch.manual_seed(0)
    dataset = labelled_dataset()
    manager = create_model(
        "llmcrs", dataset, {"llm": str(tiny_llm_dir), "device": "cpu", "demos": 2, **POPULAR}
    )
    base = LocalLLM(str(tiny_llm_dir), device="cpu")
    model = with_lora(base.model, 4, 8, 0.0)
    settings = RLPFSettings(lam=0.9)
    policy = Policy(model, base.tokenizer, manager, settings)
    # The turn that recommends the gold film, and a follow-up that does not.
    fixture = [e for e in episodes(dataset.splits["train"][:1]) if e.reference.items]
    fixture += [
        e for e in episodes(dataset.splits["train"][:1]) if "directed" in e.context.turns[-1].text
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_before = sum(policy.expected_reward(e) for e in fixture) / len(fixture)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    run, rng = RLPFRun(), random.Random(0)
    for step in range(30):
        rlpf_step(policy, optimizer, fixture[step % len(fixture)], run, rng)
    after = dict(model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    expected_after = sum(policy.expected_reward(e) for e in fixture) / len(fixture)
    assert expected_after > expected_before
    assert len(run.rewards) == 30 and run.baseline is not None


def test_the_rlpf_command_writes_the_adapter_and_the_reward_curve(
    tiny_llm_dir, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    import backend.cli_common as common
    from backend.cli import app

    monkeypatch.setattr(common, "load_dataset", lambda name, data_dir=None: labelled_dataset())
    out = tmp_path / "rlpf"
    args = ["train", "llmcrs", "--dataset", "redial", "--stage", "rlpf", "--max-steps", "3"]
    args += ["--eval-every", "3", "--out", str(out), "--set", f"llm={tiny_llm_dir}"]
    args += ["--set", "device=cpu", "--set", "demos=2", "--set", "experts=popularity"]
    args += ["--set", "single_expert=popularity"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dev expected reward" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rewards"]) == 3 and [d["step"] for d in metrics["dev"]] == [0, 3]
    assert (out / "reward_curve.html").stat().st_size > 0 and (
        out / "adapter_config.json"
    ).is_file()
    bad = CliRunner().invoke(app, ["train", "llmcrs", "--stage", "guess"])
    assert bad.exit_code == 2 and "--stage must be detection or rlpf" in bad.output


def test_inspired_strategies_map_to_sub_tasks_and_detection_is_scored_against_labels(
    tiny_dataset, monkeypatch
):
    from backend.models.llmcrs.detection import detection_report
    from backend.models.llmcrs.labels import inspired_subtask

    turns = [
        Turn(role="user", text="Hi"),
        Turn(role="system", text="What movies do you like?"),
        Turn(role="user", text="Crime."),
        Turn(role="system", text="You should watch Heat (1995).", items=["1"]),
        Turn(role="user", text="Is it good?"),
        Turn(role="system", text="It won many awards."),
        Turn(role="user", text="Ok"),
        Turn(role="system", text="I loved it myself."),
    ]
    labels = [
        [],
        ["opinion_inquiry"],
        [],
        ["personal_opinion"],
        [],
        ["credibility"],
        [],
        ["personal_experience"],
    ]
    dialogue = Dialogue(id="i", turns=turns, meta={"labels": labels})
    mapped = [inspired_subtask(dialogue, i) for i in (1, 3, 5, 7)]
    assert mapped == ["elicit", "recommend", "detail", "explain"]
    llm = Script(scores={"Recommendation": 1.0})  # always detects Recommendation
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="score")
    report = detection_report(model, [dialogue], inspired_subtask)
    assert report["n"] == 4 and report["accuracy"] == 0.25 and report["majority_baseline"] == 0.25
    assert report["confusion"]["elicit->recommend"] == 1


def test_explaining_before_any_movie_is_named_recommends_instead(tiny_dataset, monkeypatch):
    """Explanation needs an item name (Table 1); with none in the dialogue the turn recommends."""
    llm = Script("", scores={"Explanation": 3.0})
    model = llmcrs(tiny_dataset, llm, monkeypatch, choice="score")
    reply = model.respond(ask("Something exciting?"))
    assert reply.trace[0].name.endswith("Explanation")
    assert reply.recommends and reply.items[0].title in reply.text
    assert reply.trace[2].output["fallback"] == "no movie named yet: recommended"


def test_explanation_is_about_the_systems_pick_and_a_detail_about_any_named_movie(
    tiny_dataset, monkeypatch
):
    """Table 1's {item name}: a movie the user brought up is not explained back to them."""
    heat, alien, toy = (tiny_dataset.catalog[i] for i in ("1", "4", "2"))
    user_named = Dialogue(
        id="d", turns=[Turn(role="user", text=f"I loved {alien.title}. More?", items=[alien.id])]
    )
    explains = llmcrs(tiny_dataset, Script("", scores={"Explanation": 3.0}), monkeypatch)
    reply = explains.respond(user_named)
    assert reply.trace[2].output["fallback"] == "no movie named yet: recommended"
    assert alien.title not in reply.text.split(".")[0]
    picked = Dialogue(
        id="d",
        turns=[
            Turn(role="user", text="Something tense?"),
            Turn(role="system", text=f"Try {heat.title}.", items=[heat.id, toy.id]),
            Turn(role="user", text=f"Why that one? I only know {alien.title}.", items=[alien.id]),
        ],
    )
    assert explains.respond(picked).text.startswith(heat.display_title)
    details = llmcrs(tiny_dataset, Script("", scores={"Item Detail Search": 3.0}), monkeypatch)
    assert details.respond(picked).text.startswith(alien.display_title)


def test_an_adapter_trained_elsewhere_reads_its_training_demonstrations(tiny_dataset, monkeypatch):
    """Served on another catalog, the prompt keeps the demonstrations the adapter learnt with."""
    trained = make_dataset()
    trained.name = "trained-here"
    other = Dialogue(
        id="t1",
        turns=[
            Turn(role="user", text="Hello there, any westerns?"),
            Turn(role="system", text="What decade do you like?"),
        ],
    )
    trained.splits["train"] = [other]
    monkeypatch.setattr(llmcrs_model, "load_dataset", lambda name: trained)
    monkeypatch.setattr(llmcrs_model.LLMCRS, "_adapter", lambda self, name: None)
    model = llmcrs(tiny_dataset, Script(""), monkeypatch, trained_on="trained-here", demos=2)
    assert model.demos == draw_demos([other], 2, 0)
    assert model.demos != draw_demos(tiny_dataset.splits["train"], 2, 0)
