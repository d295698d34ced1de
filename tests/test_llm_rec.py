"""`llm-rec` (LLM-REDIAL §4.2): the four prompts, list matching, LoRA fine-tuning on a tiny
random Llama, beam search, the evaluation options, and one real SmolLM2 run.

The tiny model borrows SmolLM2's tokenizer (its chat template), so the file converts the bundled
GGUF once into the session's temporary CRS_HOME (~20 s); the whole file takes about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.catalog import Catalog
from backend.cli import app
from backend.data.base import Dataset
from backend.eval.evaluate import evaluate
from backend.llm import GenerationConfig, LLMError, LocalLLM
from backend.llm_remote import OpenAILLM
from backend.models.llm_rec import (
    LLMRecConfig,
    build_prompt,
    rank_titles,
    sample_examples,
    train_llm_rec,
)
from backend.registry import create_model
from backend.types import Dialogue, Reply, Turn
from tests.conftest import make_dataset, make_items

FIXTURES = Path(__file__).parent / "fixtures"
PAPER_START = "Pretend you are a movie recommender system."


@pytest.fixture
def rec_dataset() -> Dataset:
    """The tiny dataset with six train recommender turns, a dev split and a chit-chat turn."""
    base = make_dataset()
    d1, d2 = base.splits["train"]
    more = [d.model_copy(update={"id": f"{d.id}-{n}"}) for n in range(2) for d in (d1, d2)]
    chat = Dialogue(
        id="d3",
        user_id="u1",
        turns=[
            Turn(role="user", text="Hi there"),
            Turn(role="system", text="Hello! What do you like?"),
            Turn(role="user", text="Crime films"),
            Turn(role="system", text="Heat (1995) then.", items=["1"]),
        ],
    )
    return Dataset(
        name="tiny",
        catalog=base.catalog,
        splits={"train": [d1, d2, *more], "dev": [d1], "test": [chat, d1]},
        histories=base.histories,
    )


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("setting", ["zero-shot", "few-shot", "fine-tuned"])
@pytest.mark.parametrize("history", [False, True])
def test_each_prompt_has_its_parts(rec_dataset, setting, history):
    config = LLMRecConfig(setting=setting, history=history)
    examples = sample_examples(rec_dataset, config) if setting == "few-shot" else []
    dialogue = rec_dataset.splits["train"][0].prefix(3)
    prompt = build_prompt(
        config, rec_dataset.catalog, dialogue, rec_dataset.histories["u1"], examples
    )
    assert prompt.startswith(PAPER_START)
    assert "you reply me with 50 recommendations without extra sentences" in prompt
    assert prompt.endswith("Human: Seen it. Something with aliens?")
    # History titles (u1 liked Heat and Alien, disliked Toy Story) only in the history prompts.
    assert ("liked: Heat (1995); Alien (1979)\ndisliked: Toy Story (1995)" in prompt) is history
    assert ("history item lists" in prompt) is history
    few_shot = setting == "few-shot"
    assert ("5 correct examples" in prompt) is few_shot
    assert prompt.count("Recommendations:\n") == (5 if few_shot else 0)
    assert ("Example 5:" in prompt) is few_shot and "Example 6:" not in prompt


def test_few_shot_examples_are_seeded_train_turns(rec_dataset):
    first = sample_examples(rec_dataset, LLMRecConfig(setting="few-shot", seed=1))
    again = sample_examples(rec_dataset, LLMRecConfig(setting="few-shot", seed=1))
    assert first == again and len(first) == 5
    assert all(e.titles and e.conversation.count("\n") <= 1 for e in first)  # two turns at most
    with pytest.raises(ValueError, match="needs 5 recommender turns"):
        sample_examples(make_dataset(), LLMRecConfig(setting="few-shot"))


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(ValueError, match="zero-shot, few-shot, fine-tuned"):
        LLMRecConfig(setting="one-shot")


# ----------------------------------------------------------------------------- matching


def test_a_generated_list_becomes_a_ranking():
    catalog = Catalog(make_items())
    text = (
        "Here are 50 recommendations:\n"
        "1. Heat (1995)\n"  # exact
        "2. Toy Story\n"  # no year
        "3. The Usual Suspect (1995)\n"  # misspelled
        "4. The Matrix (1999)\n"  # not in the catalog: dropped
        "5. Alien (1979)\n"  # already mentioned: excluded
        "6. Heat (1995)\n"  # a repeat counts once
        "7. **Aliens** - more marines"
    )
    ranked = rank_titles([text], catalog, exclude={"4"}, cutoff=85.0)
    assert [item_id for _, item_id, _ in ranked] == ["1", "2", "3", "5"]
    assert ranked[2][2] < 100  # the misspelling matched fuzzily


def test_beams_merge_in_order():
    catalog = Catalog(make_items())
    beams = ["Heat (1995)", "Heat (1995)\nAliens (1986)", "Toy Story (1995)"]
    ranked = rank_titles(beams, catalog, exclude=set(), cutoff=85.0)
    assert [item_id for _, item_id, _ in ranked] == ["1", "5", "2"]


# ----------------------------------------------------------------------------- fine-tuning


def test_lora_training_lowers_the_loss_and_the_adapter_loads(rec_dataset, tiny_llm_dir, tmp_path):
    config = LLMRecConfig(
        setting="fine-tuned",
        llm=str(tiny_llm_dir),
        device="cpu",
        max_steps=12,
        epochs=10,
        batch_size=4,
        grad_accum=1,
        lr=1e-2,
    )
    out = train_llm_rec(rec_dataset, config, tmp_path / "adapter")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == len(metrics["loss"]) == 12
    assert metrics["dev_loss"]["after"] < metrics["dev_loss"]["before"]
    assert metrics["loss"][-1] < metrics["loss"][0]
    assert metrics["seconds_per_step"] > 0
    assert (out / "adapter_config.json").is_file() and (out / "config.json").is_file()

    model = create_model(
        "llm-rec",
        rec_dataset,
        {"setting": "fine-tuned", "adapter": str(out), "device": "cpu", "max_new_tokens": 6},
    )
    reply = model.respond(rec_dataset.splits["test"][1].prefix(1))
    assert isinstance(reply, Reply) and reply.text
    assert [s.name for s in reply.trace] == ["prompt", "generate", "fuzzy match"]
    assert len(reply.trace[1].output) == 10  # beam search is on by default when fine-tuned
    assert "+adapter" in model.llm.name


def test_a_missing_adapter_names_the_train_command(tiny_dataset):
    with pytest.raises(FileNotFoundError, match="crs train llm-rec --dataset tiny`"):
        create_model("llm-rec", tiny_dataset, {"setting": "fine-tuned"})
    with pytest.raises(FileNotFoundError, match="crs train llm-rec --dataset tiny --history"):
        create_model("llm-rec", tiny_dataset, {"setting": "fine-tuned", "history": True})


def test_train_command_saves_under_out(tiny_llm_dir, tmp_path):
    out = tmp_path / "cli-adapter"
    args = ["train", "llm-rec", "--dataset", "redial", "--data-dir", str(FIXTURES / "redial")]
    args += ["--max-steps", "1", "--grad-accum", "1", "--out", str(out)]
    args += ["--set", f"llm={tiny_llm_dir}", "--set", "device=cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "s/step" in result.output and (out / "adapter_config.json").is_file()


# ----------------------------------------------------------------------------- beam search


def test_beam_search_returns_every_beam_best_first(tiny_llm_dir):
    llm = LocalLLM(tiny_llm_dir, device="cpu")
    messages = [{"role": "user", "content": "Name a movie."}]
    longer = [{"role": "user", "content": "I loved Heat (1995) and Alien (1979). Name a movie."}]
    config = GenerationConfig(max_new_tokens=5, num_beams=3)
    beams = llm.chat_beams([messages, longer], config)
    assert [len(b) for b in beams] == [3, 3]
    scores = [score for _, score in beams[0]]
    assert scores == sorted(scores, reverse=True)
    # The shorter prompt is left-padded in the batch; its shared prompt cache must not show it.
    alone = llm.chat_beams([messages], config)[0]
    assert [t for t, _ in alone] == [t for t, _ in beams[0]]
    assert [s for _, s in alone] == pytest.approx(scores, abs=1e-4)
    assert llm.chat(messages, config) == beams[0][0][0]
    with pytest.raises(ValueError, match="stream"):
        next(llm.stream(messages, config))
    remote = OpenAILLM(model="m", base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(LLMError, match="no beam search"):
        remote.chat(messages, config)
    with pytest.raises(LLMError, match="cannot return beams"):
        remote.chat_beams([messages], config)


# ----------------------------------------------------------------------------- evaluation


def test_eval_on_recommending_turns_only_with_chosen_ks(rec_dataset):
    model = create_model("popularity", rec_dataset)
    every = evaluate(model, rec_dataset, "test", progress=False)
    only = evaluate(
        model,
        rec_dataset,
        "test",
        rec_turns_only=True,
        recall_ks=(5, 10, 50),
        rank_ks=(5, 10, 50),
        progress=False,
    )
    assert (every.n, only.n) == (4, 3)  # the chit-chat turn is left out
    assert only.metrics["n_text"] == 3 and only.config["rec_turns_only"] is True
    assert {"recall@5", "recall@10", "recall@50", "ndcg@5", "ndcg@10", "ndcg@50"} <= set(
        only.metrics
    )
    assert "recall@1" not in only.metrics


def test_eval_cli_takes_rec_turns_only_and_ks(tmp_path):
    out = tmp_path / "pop.json"
    args = ["eval", "popularity", "--dataset", "redial", "--data-dir", str(FIXTURES / "redial")]
    result = CliRunner().invoke(
        app, [*args, "--rec-turns-only", "--ks", "5,10,50", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert "ndcg@5" in report["metrics"] and report["config"]["rec_turns_only"] is True
    result = CliRunner().invoke(app, [*args, "--ks", "five"])
    assert result.exit_code == 2 and "--ks expects" in result.output


def test_zero_shot_smollm2_end_to_end(rec_dataset):
    """The real bundled SmolLM2 answers one recommending turn through `respond_batch`."""
    model = create_model("llm-rec", rec_dataset, {"max_new_tokens": 32, "device": "cpu"})
    dialogue = rec_dataset.splits["test"][1].prefix(3)  # Heat and The Usual Suspects mentioned
    reply = model.respond(dialogue)
    assert reply.text and reply.completion_tokens > 0
    assert [s.name for s in reply.trace] == ["prompt", "generate", "fuzzy match"]
    assert reply.trace[0].input[0]["content"].startswith(PAPER_START)
    assert reply.trace[1].output  # the generated list
    assert all(
        i.item_id in rec_dataset.catalog and i.item_id not in {"1", "3"} for i in reply.items
    )
