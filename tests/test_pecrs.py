"""PECRS: inputs, the rerank attention mask, shared negatives, a training run that lowers the
loss, the save/load round trip and inference, on a tiny random Llama; one real SmolLM2 run.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backend.catalog import Catalog
from backend.cli import app
from backend.data.base import Dataset
from backend.eval.evaluate import evaluate
from backend.models.pecrs import (
    ITEM,
    REC,
    REC_END,
    SEP,
    PECRSConfig,
    Sample,
    all_item_vectors,
    build,
    build_batch,
    pecrs_losses,
    rank_items,
    rec_states,
    sample_negatives,
    slot,
    train_pecrs,
    train_step,
    trainable_parameters,
    training_batch,
)
from backend.registry import create_model
from backend.types import Dialogue, Reply, Turn
from tests.conftest import make_dataset, make_items

# grad_accum 1: the tests count one optimizer step per micro-batch of `batch_size`.
TINY = {
    "device": "cpu",
    "m_train": 3,
    "m_infer": 5,
    "item_tokens": 16,
    "max_new_tokens": 8,
    "grad_accum": 1,
}


@pytest.fixture
def rec_dataset() -> Dataset:
    """The tiny dataset with a few more training dialogues and a dev split."""
    base = make_dataset()
    d1, d2 = base.splits["train"]
    more = [d.model_copy(update={"id": f"{d.id}-{n}"}) for n in range(3) for d in (d1, d2)]
    return Dataset(
        name="tiny",
        catalog=base.catalog,
        splits={"train": [d1, d2, *more], "dev": [d1], "test": [d1, d2]},
        histories=base.histories,
    )


def config(tiny_llm_dir: Path, **overrides) -> PECRSConfig:
    return PECRSConfig(backbone=str(tiny_llm_dir), **{**TINY, **overrides})


# ----------------------------------------------------------------------------- inputs


def test_mentions_become_item_vectors_behind_role_markers(rec_dataset, tiny_llm_dir):
    built = build(rec_dataset, config(tiny_llm_dir))
    inputs, special = built.inputs, built.net.special
    dialogue = rec_dataset.splits["train"][0]
    (sample,) = inputs.turn_samples(dialogue, 3)
    row = {i: r for r, i in enumerate(built.item_ids)}
    # The seeker's Heat (1995) is [SEP] v [SEP]; the recommender's Usual Suspects [REC] v [REC_END].
    ctx = sample.context
    at = ctx.index(slot(row["1"]))
    assert ctx[at - 1] == ctx[at + 1] == special[SEP]
    at = ctx.index(slot(row["3"]))
    assert (ctx[at - 1], ctx[at + 1]) == (special[REC], special[REC_END])
    text = built.net.tokenizer.decode([i for i in ctx if i >= 0])
    assert "Heat (1995)" not in text and text.count(ITEM) == 2
    assert text.endswith("System:")
    assert sample.gold == row["4"]
    assert built.net.tokenizer.decode(sample.response[:-1]).strip() == f"{ITEM} is a classic."


# ----------------------------------------------------------------------------- the mask


def test_candidates_see_only_the_context_and_share_one_position():
    batch = build_batch(
        [[5, 6, 7, 8, 9, 10]],
        rec_at=[3],
        candidates=[[0, 1, 2]],
        gold=[1],
        loss_from=[3],
        device=torch.device("cpu"),
    )
    allowed = batch.mask[0, 0] == 0
    cands = [6, 7, 8]
    for c in cands:
        # The context up to [REC] (positions 0-3) and itself; not the response, not each other.
        assert allowed[c].nonzero().flatten().tolist() == [0, 1, 2, 3, c]
    assert batch.positions[0, cands].tolist() == [4, 4, 4]
    assert batch.positions[0, :6].tolist() == list(range(6))
    # The sequence itself stays causal and never sees a candidate.
    assert not allowed[:6, 6:].any()
    assert torch.equal(allowed[:6, :6], torch.ones(6, 6, dtype=torch.bool).tril())
    assert batch.gold_at.tolist() == [1]
    # Labels: [REC] (id 8 at position 3) is predicted from position 2, then the rest.
    assert batch.labels[0, 2:5].tolist() == [8, 9, 10]


def test_candidate_scores_do_not_depend_on_the_other_candidates(rec_dataset, tiny_llm_dir):
    """The practical meaning of the mask: a candidate's rerank score is the same whatever else
    is in the shortlist and wherever it stands."""
    net = build(rec_dataset, config(tiny_llm_dir)).net.eval()
    context = [100, 200, 300, net.special[REC]]
    first = build_batch([context], [3], [[0, 1, 2, 3]], [None], [3], net.device)
    second = build_batch([context], [3], [[5, 2, 4]], [None], [3], net.device)
    with torch.no_grad():
        a = net.rerank_scores(net.hidden(first), first)[0]
        b = net.rerank_scores(net.hidden(second), second)[0]
    assert torch.allclose(a[2], b[1], atol=1e-5)


def test_rec_states_do_not_depend_on_the_padding_of_their_chunk(rec_dataset, tiny_llm_dir):
    """Contexts of different lengths give the same query and decision alone or chunked together."""
    net = build(rec_dataset, config(tiny_llm_dir)).net.eval()
    contexts = [[100, 200, 300, 400, 500, 600], [100], [700, 800, 900]]
    alone, decided = rec_states(net, contexts, chunk=1)
    together, decided_together = rec_states(net, contexts, chunk=3)
    assert torch.allclose(alone, together, atol=1e-4)
    assert torch.allclose(decided.p, decided_together.p, atol=1e-5)


# ----------------------------------------------------------------------------- negatives


def test_shared_negatives_avoid_every_positive_of_the_batch():
    rng = random.Random(0)
    golds = [0, 1, None, 2]
    for _ in range(50):
        drawn = sample_negatives(golds, n_items=20, m=10, share=True, rng=rng)
        assert drawn[0] == drawn[1] == drawn[3] and drawn[2] == []
        assert not {0, 1, 2} & set(drawn[0]) and len(set(drawn[0])) == 10


def test_unshared_negatives_are_drawn_per_context():
    rng = random.Random(0)
    drawn = sample_negatives([0, 1], n_items=200, m=20, share=False, rng=rng)
    assert drawn[0] != drawn[1]
    assert 0 not in drawn[0] and 1 not in drawn[1]


def test_too_few_items_for_the_negatives_is_a_clear_error():
    with pytest.raises(ValueError, match="m_train=10 negatives need more than 5 items"):
        sample_negatives([0], n_items=5, m=10, share=True, rng=random.Random(0))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("catalog_recall", [True, False])  # whole catalog / paper's M sampled
def test_two_training_steps_lower_the_loss(rec_dataset, tiny_llm_dir, catalog_recall):
    torch.manual_seed(0)
    cfg = config(tiny_llm_dir, lr=1e-3, catalog_recall=catalog_recall)
    built = build(rec_dataset, cfg)
    net = built.net
    samples = built.inputs.samples(rec_dataset.splits["train"])[:4]
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rng = random.Random(0)
    batch = training_batch(net, samples, random.Random(1))
    before = pecrs_losses(net, batch)
    assert before["recall"] > 0 and before["rerank"] > 0 and before["gen"] > 0
    for _ in range(2):
        train_step(net, optimizer, scheduler, [samples], rng)
    with torch.no_grad():
        after = pecrs_losses(net, batch)
    assert after["loss"] < before["loss"]


def test_only_lora_heads_and_special_rows_change(rec_dataset, tiny_llm_dir):
    cfg = config(tiny_llm_dir, lr=1e-2)
    net = build(rec_dataset, cfg).net
    embedding = net.lm.get_input_embeddings().weight
    before = embedding.detach().clone()
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    samples = build(rec_dataset, cfg).inputs.samples(rec_dataset.splits["train"])[:4]
    train_step(net, optimizer, scheduler, [samples], random.Random(0))
    changed = (embedding.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(net.special.values())
    # Outside LoRA nothing of the LM trains: the special rows are their own small parameter,
    # so the optimiser holds no state for the embedding's other rows.
    assert not [n for n, p in net.lm.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not embedding.requires_grad and net.special_rows.shape == (4, embedding.shape[1])
    assert all(p.numel() < embedding.numel() for p in trainable_parameters(net))


def test_training_saves_a_checkpoint_that_scores_identically(rec_dataset, tiny_llm_dir, tmp_path):
    cfg = config(tiny_llm_dir, epochs=1, batch_size=2, lr=1e-3)
    path = train_pecrs(rec_dataset, cfg, tmp_path / "ckpt")
    metrics = json.loads((path / "metrics.json").read_text())
    saved = json.loads((path / "config.json").read_text())
    # 12 system turns (d1 has two, d2 one; four copies each) in batches of 2.
    assert metrics["steps"] == 6 and len(metrics["loss"]) == 6 and metrics["dev"]
    assert 0 < metrics["trainable_fraction"] < 1 and metrics["seconds_per_epoch"] > 0
    assert saved["model"] == "pecrs" and saved["m_train"] == 3

    model = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path)})
    again = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path)})
    dialogue = rec_dataset.splits["test"][0].prefix(3)
    contexts = [model.built.inputs.context(dialogue.turns)]
    exclude = [{model.built.inputs.row["1"], model.built.inputs.row["3"]}]
    one, _ = rank_items(model.net, contexts, exclude, all_item_vectors(model.net))
    two, _ = rank_items(again.net, contexts, exclude, all_item_vectors(again.net))
    assert one == two
    assert len(one[0]) == min(TINY["m_infer"], len(rec_dataset.catalog) - 2)
    assert all(r not in exclude[0] for r, _ in one[0])

    model.save(tmp_path / "saved")
    loaded = type(model).load(tmp_path / "saved", rec_dataset)
    three, _ = rank_items(loaded.net, contexts, exclude, all_item_vectors(loaded.net))
    assert three == one

    reply = model.respond(dialogue)
    assert [s.item_id for s in reply.items] == [model.built.item_ids[r] for r, _ in one[0]]
    assert reply.items[0].title and reply.trace[0].name == "recall + rerank"
    assert "[REC]" not in reply.text and "[SEP]" not in reply.text
    # The LM's cost: it read the context (and any item slot) and wrote the response.
    assert reply.prompt_tokens >= len(contexts[0]) and reply.completion_tokens > 0


def test_evaluation_reports_perplexity(rec_dataset, tiny_llm_dir, tmp_path):
    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    model = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path)})
    result = evaluate(model, rec_dataset, "test", progress=False)
    metrics = result.metrics
    assert metrics["n_rec"] == 3 and 1 < metrics["perplexity"] < 1e6
    assert {"recall@1", "rouge-1", "distinct-2", "item-f1"} <= set(metrics)
    # Ranking only: no perplexity, and the same ranking.
    ranking = create_model(
        "pecrs", rec_dataset, {**TINY, "checkpoint": str(path), "generate": False}
    )
    fast = evaluate(ranking, rec_dataset, "test", progress=False).metrics
    assert "perplexity" not in fast and fast["recall@10"] == metrics["recall@10"]


def test_a_missing_checkpoint_names_the_train_command(tiny_dataset):
    with pytest.raises(FileNotFoundError, match="crs train pecrs --dataset tiny`"):
        create_model("pecrs", tiny_dataset, {"device": "cpu"})


def test_train_command_writes_metrics(tiny_llm_dir, tmp_path, monkeypatch, rec_dataset):
    import backend.cli_common as common

    monkeypatch.setattr(common, "load_dataset", lambda name, data_dir=None: rec_dataset)
    out = tmp_path / "cli"
    args = ["train", "pecrs", "--dataset", "redial", "--max-steps", "2", "--batch-size", "2"]
    args += ["--out", str(out), "--set", f"backbone={tiny_llm_dir}", "--set", "device=cpu"]
    args += ["--set", "m_train=3", "--set", "item_tokens=16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "s/step" in result.output and "% of parameters trained" in result.output
    assert (out / "heads.pt").is_file() and (out / "adapter_config.json").is_file()
    again = CliRunner().invoke(app, [*args, "--skip-existing"])
    assert "skipping" in again.output


def test_dialogue_without_items_still_gets_a_ranking(rec_dataset, tiny_llm_dir, tmp_path):
    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    model = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path), "generate": False})
    reply = model.respond(Dialogue(id="x", turns=[Turn(role="user", text="hi")]))
    assert len(reply.items) == 5 and reply.text
    # Ranking only, told to recommend: the reply names the top film and two alternatives.
    model.config.rec_threshold = 0.0
    reply = model.respond(Dialogue(id="x", turns=[Turn(role="user", text="hi")]))
    assert reply.recommends and all(i.title in reply.text for i in reply.items[:3])


def test_served_pecrs_answers_over_http_and_its_items_render_as_cards(
    rec_dataset, tiny_llm_dir, tmp_path
):
    from fastapi.testclient import TestClient

    from app.cards import item_cards
    from backend.server import ModelSpec, ServerConfig, create_app

    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    spec = ModelSpec(name="pecrs", config={**TINY, "checkpoint": str(path)})
    server = ServerConfig(dataset="tiny", models=[spec], device="cpu")
    dialogue = {"id": "x", "turns": [{"role": "user", "text": "A crime movie like Heat (1995)?"}]}
    with TestClient(create_app(server, rec_dataset)) as client:
        assert client.get("/health").json()["models"]["pecrs"] == "ready"
        response = client.post("/models/pecrs/respond", json={"dialogue": dialogue})
    assert response.status_code == 200, response.text
    reply = Reply.model_validate(response.json())
    assert reply.model == "pecrs" and len(reply.items) == 5 and reply.text
    cards = item_cards(reply, {i.id: i for i in rec_dataset.catalog})
    assert cards.count('class="crs-card"') == 5
    assert rec_dataset.catalog[reply.items[0].item_id].title in cards


def test_real_smollm2_backbone_trains_a_step_and_answers(rec_dataset, tmp_path):
    """The bundled SmolLM2-135M as the backbone: about 5% of its parameters train (paper §3.5),
    a step runs, and the reply names a catalog movie when the LM writes [ITEM]."""
    cfg = PECRSConfig(device="cpu", m_train=3, m_infer=5, max_steps=1, batch_size=2)
    cfg.max_new_tokens = 12
    path = train_pecrs(rec_dataset, cfg, tmp_path / "real")
    metrics = json.loads((path / "metrics.json").read_text())
    assert 0.03 < metrics["trainable_fraction"] < 0.07
    model = create_model("pecrs", rec_dataset, {"checkpoint": str(path), "device": "cpu"})
    reply = model.respond(rec_dataset.splits["test"][0].prefix(3))
    assert len(reply.items) == len(rec_dataset.catalog) - 2 and reply.text.strip()
    assert ITEM not in reply.text


def test_a_stopped_training_resumes_to_the_same_parameters(
    rec_dataset, tiny_llm_dir, tmp_path, monkeypatch
):
    """Stopped after step 4 of 6 and run again with the same command, training ends with the
    parameters and losses of an unbroken run."""
    from backend.models.pecrs import trainer as pecrs  # where train_pecrs looks train_step up

    cfg = dict(epochs=1, batch_size=2, lr=1e-3, save_every=1, eval_every=3)
    whole = train_pecrs(rec_dataset, config(tiny_llm_dir, **cfg), tmp_path / "whole")

    real_step = pecrs.train_step
    calls = {"n": 0}

    def stop_at_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C, or the session ending
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pecrs, "train_step", stop_at_five)
    with pytest.raises(KeyboardInterrupt):
        train_pecrs(rec_dataset, config(tiny_llm_dir, **cfg), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "train_state.pt").is_file()
    monkeypatch.setattr(pecrs, "train_step", real_step)
    resumed = train_pecrs(rec_dataset, config(tiny_llm_dir, **cfg), tmp_path / "resumed")
    assert not (resumed / "train_state.pt").exists()

    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["resumed_at_step"] == 4 and a["loss"] == b["loss"] and a["dev"] == b["dev"]
    one = torch.load(whole / "heads.pt", weights_only=True)
    two = torch.load(resumed / "heads.pt", weights_only=True)
    assert torch.allclose(one["special"], two["special"], atol=1e-6)
    assert all(torch.allclose(v, two["heads"][k], atol=1e-6) for k, v in one["heads"].items())
    from safetensors.torch import load_file

    lora_one = load_file(whole / "adapter_model.safetensors")
    lora_two = load_file(resumed / "adapter_model.safetensors")
    assert all(torch.allclose(v, lora_two[k], atol=1e-6) for k, v in lora_one.items())


def test_the_recommend_threshold_is_chosen_on_dev_and_makes_the_item_appear(
    rec_dataset, tiny_llm_dir, tmp_path
):
    """The decision reads p([REC]); the threshold with the best dev item-presence F1 is saved
    with the checkpoint; when it says recommend, the reply names the item (never a bare [ITEM])."""
    from backend.models.pecrs import choose_rec_threshold

    assert choose_rec_threshold([0.1, 0.4, 0.35, 0.8], [False, True, True, True])[0] == 0.35
    assert choose_rec_threshold([0.9, 0.2], [False, True]) == (0.2, 2 / 3)

    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    saved = json.loads((path / "config.json").read_text())
    assert 0.0 <= saved["rec_threshold"] <= 1.0  # chosen on dev, not the argmax default
    dialogue = rec_dataset.splits["test"][0].prefix(3)
    always = create_model(
        "pecrs", rec_dataset, {**TINY, "checkpoint": str(path), "rec_threshold": 0.0}
    )
    assert always.config.rec_threshold == 0.0
    reply = always.respond(dialogue)
    assert reply.recommends and reply.items[0].title in reply.text and "[ITEM]" not in reply.text
    assert reply.trace[1].name == "recommend?" and "p([REC])" in reply.trace[1].input
    never = create_model(
        "pecrs", rec_dataset, {**TINY, "checkpoint": str(path), "rec_threshold": 1.5}
    )
    assert not never.respond(dialogue).recommends
    tuned = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path)})
    assert tuned.config.rec_threshold == saved["rec_threshold"]


def test_every_movie_of_a_response_is_a_sample_and_epochs_favour_recommending_turns(
    rec_dataset, tiny_llm_dir
):
    from backend.models.pecrs import epoch_order

    built = build(rec_dataset, config(tiny_llm_dir))
    two = Dialogue(
        id="x",
        turns=[
            Turn(role="user", text="crime please"),
            Turn(role="system", text="Heat (1995) or The Usual Suspects (1995)?", items=["1", "3"]),
        ],
    )
    row = {i: r for r, i in enumerate(built.item_ids)}
    assert [s.gold for s in built.inputs.turn_samples(two, 1)] == [row["1"], row["3"]]
    paper = build(rec_dataset, config(tiny_llm_dir, every_item=False))
    assert [s.gold for s in paper.inputs.turn_samples(two, 1)] == [row["1"]]

    samples = [Sample([1], [2], 0)] * 10 + [Sample([1], [2], None)] * 90
    order = epoch_order(samples, 0.75, random.Random(0))
    assert sum(samples[i].gold is not None for i in order) == 10 and len(order) == 13
    assert len(epoch_order(samples, 0.0, random.Random(0))) == 100  # the paper's natural mix


def test_item_bias_starts_from_log_popularity_and_shifts_recall(rec_dataset, tiny_llm_dir):
    built = build(rec_dataset, config(tiny_llm_dir))
    row = {i: r for r, i in enumerate(built.item_ids)}
    bias = built.net.heads.bias
    # Train mentions: Usual Suspects (3) and Alien (4) four times each, Toy Story (2) four times.
    assert bias.requires_grad and bias[row["3"]] > bias[row["5"]] == 0.0
    plain = build(rec_dataset, config(tiny_llm_dir, item_bias=False)).net.heads.bias
    assert not plain.requires_grad and float(plain.abs().sum()) == 0.0
    queries = torch.zeros(1, built.net.lm.config.hidden_size)
    items = all_item_vectors(built.net)
    with torch.no_grad():
        shifted = built.net.similarity(queries, items) - bias
        bias.zero_()
        assert torch.allclose(built.net.similarity(queries, items), shifted, atol=1e-5)


def test_frozen_warm_heads_stay_while_lora_trains(rec_dataset, tiny_llm_dir):
    """`freeze_warm_start`: a LoRA step moves LoRA and the item side, never f or the item bias."""
    from backend.models.pecrs.warm_start import freeze_warm_heads

    cfg = config(tiny_llm_dir, lr=1e-2)
    built = build(rec_dataset, cfg)
    net = built.net
    heads = net.heads
    frozen = [p.detach().clone() for p in [*heads.f.parameters(), heads.bias]]
    lora = [p.detach().clone() for n, p in net.named_parameters() if "lora_B" in n]
    freeze_warm_heads(net)
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    samples = built.inputs.samples(rec_dataset.splits["train"])[:4]
    train_step(net, optimizer, scheduler, [samples], random.Random(0))
    after = [p.detach() for p in [*heads.f.parameters(), heads.bias]]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))
    moved = [p.detach() for n, p in net.named_parameters() if "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(lora, moved, strict=True))


def test_the_warm_start_fits_the_heads_and_rerank_is_kept_only_if_it_helps_on_dev(
    rec_dataset, tiny_llm_dir, tmp_path
):
    """Before LoRA, the heads learn recall on cached [REC] states (loss falls); the checkpoint
    says whether rerank beat recall alone on dev, and a second run reuses the cached states."""
    from backend.settings import get_settings

    cfg = config(tiny_llm_dir, max_steps=2, batch_size=2, eval_every=1, warm_start_epochs=15)
    path = train_pecrs(rec_dataset, cfg, tmp_path / "warm")
    metrics = json.loads((path / "metrics.json").read_text())
    warm = metrics["warm_start"]
    assert len(warm["loss"]) == 15 and warm["loss"][-1] < 0.8 * warm["loss"][0]
    # The epoch kept is the one with the best dev recall.
    assert len(warm["dev"]) == 15 and warm["dev"][warm["kept_epoch"] - 1] == max(warm["dev"])
    assert metrics["dev"][0]["step"] == 0  # the warm-started heads are evaluated before LoRA
    saved = json.loads((path / "config.json").read_text())
    by_mode = [d["by_mode"] for d in metrics["dev"] if d["step"] == metrics["best_step"]][0]
    better = "rerank" in by_mode and by_mode["rerank"]["mean"] > by_mode["recall"]["mean"]
    assert saved["rerank"] is better is metrics["rerank_used"]
    cached = set((get_settings().cache / "pecrs").glob("rec-states-*.pt"))
    assert len(cached) >= 2  # the train and the dev contexts (other tests add theirs)
    train_pecrs(rec_dataset, cfg, tmp_path / "again")
    assert set((get_settings().cache / "pecrs").glob("rec-states-*.pt")) == cached


def test_a_checkpoint_serves_another_catalog_with_that_catalogs_bias_and_statistics(
    rec_dataset, tiny_llm_dir, tmp_path
):
    """Trained on ReDial, served on MovieLens: the heads read item texts, so they carry over."""
    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    items = make_items()[:3]
    other = Dataset(
        name="other",
        catalog=Catalog(items, name="other"),
        splits={"test": [Dialogue(id="x", turns=[Turn(role="user", text="hi")])]},
    )
    same = create_model("pecrs", rec_dataset, {**TINY, "checkpoint": str(path)})
    served = create_model("pecrs", other, {**TINY, "checkpoint": str(path), "generate": False})
    heads = served.net.heads
    assert heads.bias.shape == (len(items),)
    assert torch.allclose(heads.items.mean, served.net.items.feature_stats()[0])
    assert not torch.allclose(heads.items.mean, same.net.heads.items.mean)
    for a, b in zip(heads.f.parameters(), same.net.heads.f.parameters(), strict=True):
        assert torch.equal(a, b)  # f and h_item are the trained ones
    reply = served.respond(other.splits["test"][0])
    assert {s.item_id for s in reply.items} <= {i.id for i in items} and reply.items


def test_served_on_a_bare_catalog_items_borrow_the_training_catalogs_metadata(
    rec_dataset, tiny_llm_dir, tmp_path, monkeypatch
):
    """MovieLens has no cast or plot; a ReDial checkpoint reads the same film's from ReDial."""
    import backend.models.pecrs.inference as inference

    path = train_pecrs(rec_dataset, config(tiny_llm_dir, max_steps=1, batch_size=2), tmp_path / "c")
    bare = [i.model_copy(update={"people": {}, "description": ""}) for i in make_items()[:3]]
    other = Dataset(name="other", catalog=Catalog(bare, name="other"), splits={})
    monkeypatch.setattr(inference, "load_dataset", lambda name: rec_dataset)
    served = create_model(
        "pecrs", other, {**TINY, "checkpoint": str(path), "trained_on": rec_dataset.name}
    )
    assert served.filled == 3 and "3 items described from" in served.version
    filled, _ = other.catalog.filled_from(rec_dataset.catalog)
    borrowed = build(replace(other, catalog=filled), config(tiny_llm_dir)).net.items
    own = build(other, config(tiny_llm_dir)).net.items
    assert torch.equal(served.net.items.states, borrowed.states)
    assert not torch.equal(borrowed.states, own.states)
    plain = create_model(
        "pecrs",
        other,
        {**TINY, "checkpoint": str(path), "trained_on": rec_dataset.name, "fill_metadata": False},
    )
    assert plain.filled == 0 and torch.equal(plain.net.items.states, own.states)


@pytest.mark.parametrize(
    ("overrides", "trains"),
    [
        ({"catalog_recall": False, "m_train": 2}, True),  # the paper's shared negatives
        ({"catalog_recall": False, "m_train": 2, "share_negatives": False}, True),
        ({"alpha": 0.0}, False),  # Table 5 "w/o Recall loss": the warm start is recall training
    ],
)
def test_the_warm_start_follows_table_5s_ablation_settings(
    rec_dataset, tiny_llm_dir, overrides, trains
):
    """Sampled negatives (shared or per context) still teach recall; without the recall loss the
    warm start leaves the heads as they started."""
    from backend.models.pecrs.warm_start import warm_start_heads

    net = build(rec_dataset, config(tiny_llm_dir, warm_start_epochs=15, **overrides)).net
    samples = build(rec_dataset, config(tiny_llm_dir)).inputs.samples(rec_dataset.splits["train"])
    before = [p.detach().clone() for p in net.heads.f.parameters()]
    done = warm_start_heads(net, samples, None, random.Random(0), batch_size=4)
    after = list(net.heads.f.parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed is trains
    if trains:
        assert len(done.loss) == 15 and done.loss[-1] < 0.8 * done.loss[0]
        assert done.seconds_per_epoch > 0
    else:
        assert done.loss == []


def test_sampled_recall_loss_sees_only_the_gold_and_its_negatives():
    """With every other item drawn as a negative, the sampled loss is the whole-catalog loss;
    shared negatives are one draw that avoids every gold of the batch."""
    from backend.models.pecrs.warm_start import recall_loss

    logits = torch.randn(3, 6)
    golds = torch.tensor([0, 2, 5])
    catalog = recall_loss(logits, golds, PECRSConfig(catalog_recall=True), random.Random(0))
    every = PECRSConfig(catalog_recall=False, share_negatives=False, m_train=5)
    assert torch.allclose(recall_loss(logits, golds, every, random.Random(0)), catalog)
    shared = PECRSConfig(catalog_recall=False, m_train=3)  # 6 items - 3 golds = 3 left to draw
    # Each row is then its gold against items 1, 3, 4 (in any order: the loss is the same).
    rows = torch.stack([logits[r, [int(g), 1, 3, 4]] for r, g in enumerate(golds)])
    expected = torch.nn.functional.cross_entropy(rows, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(recall_loss(logits, golds, shared, random.Random(0)), expected)


def test_a_named_run_drops_fields_and_serves_them_dropped_on_another_catalog(
    rec_dataset, tiny_llm_dir
):
    """`checkpoint=NAME` trains and serves CRS_HOME/checkpoints/pecrs/NAME (the demo's recipe);
    the fields dropped in training are dropped from the serving catalog's items too."""
    from backend.settings import get_settings

    cfg = config(tiny_llm_dir, max_steps=1, batch_size=2, checkpoint="genres-only")
    cfg.drop_fields = "actors,directors,plot"
    path = train_pecrs(rec_dataset, cfg)
    assert path == get_settings().checkpoints / "pecrs" / "genres-only"
    other = Dataset(name="other", catalog=Catalog(make_items()[:3], name="other"), splits={})
    served = create_model("pecrs", other, {**TINY, "checkpoint": "genres-only"})
    assert served.config.drop_fields == "actors,directors,plot"
    dropped = build(other, config(tiny_llm_dir, drop_fields=cfg.drop_fields)).net.items
    every = build(other, config(tiny_llm_dir)).net.items
    assert torch.equal(served.net.items.states, dropped.states)
    assert not torch.equal(served.net.items.states, every.states)
    with pytest.raises(FileNotFoundError, match="--set checkpoint=missing-run`"):
        create_model("pecrs", other, {**TINY, "checkpoint": "missing-run"})
    with pytest.raises(ValueError, match="drop_fields"):
        PECRSConfig(drop_fields="budget")
