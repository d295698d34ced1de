import pytest

from backend.registry import available_models, create_model
from backend.types import Dialogue, Reply, Turn


def test_registry_lists_the_baselines_with_descriptions():
    models = available_models()
    for name in ("popularity", "retrieval", "sasrec", "llm-zero-shot"):
        assert name in models
        assert len(models[name].description) > 40


def test_unknown_model_and_bad_config_give_clear_errors(tiny_dataset):
    with pytest.raises(KeyError, match="registered models: .*popularity"):
        create_model("nope", tiny_dataset)
    with pytest.raises(ValueError, match="unknown config key.*colour.*valid keys"):
        create_model("popularity", tiny_dataset, {"colour": "red"})


def test_popularity_ranks_by_train_counts_and_excludes_mentions(tiny_dataset):
    model = create_model("popularity", tiny_dataset)
    dialogue = Dialogue(id="x", turns=[Turn(role="user", text="I saw Heat", items=["1"])])
    reply = model.respond(dialogue)
    # Counts (train mentions + ratings): 1->2, 2->2, 4->2, 3->1; ties keep catalog order.
    assert "1" not in reply.item_ids
    assert reply.item_ids[:3] == ["2", "4", "3"]
    assert reply.recommends and "Toy Story (1995)" in reply.text
    assert reply.model == "popularity" and reply.seconds > 0


def test_stream_yields_deltas_then_the_reply(tiny_dataset):
    model = create_model("popularity", tiny_dataset)
    parts = list(model.stream(Dialogue(id="x", turns=[Turn(role="user", text="hi")])))
    assert isinstance(parts[-1], Reply)
    assert all(isinstance(p, str) for p in parts[:-1])
    assert "".join(parts[:-1]) == parts[-1].text


def test_retrieval_runs_minilm_for_real_and_finds_the_genre(tiny_dataset):
    model = create_model("retrieval", tiny_dataset, {"faiss_min_items": 1, "item_weight": 0.0})
    reply = model.respond(
        Dialogue(id="x", turns=[Turn(role="user", text="A scary space monster movie")])
    )
    assert reply.item_ids[0] in {"4", "5"}  # Alien / Aliens
    assert [s.score for s in reply.items] == sorted((s.score for s in reply.items), reverse=True)
    # faiss and the numpy path agree.
    exact = create_model("retrieval", tiny_dataset, {"faiss_min_items": 10_000, "item_weight": 0.0})
    assert (
        exact.respond(
            Dialogue(id="x", turns=[Turn(role="user", text="A scary space monster movie")])
        ).item_ids
        == reply.item_ids
    )


def test_sasrec_trains_saves_and_recommends_what_follows(tiny_dataset, tmp_path):
    from backend.models.sasrec import SASRecConfig, train_sasrec

    # Every training sequence goes Heat -> Usual Suspects, so that is what should follow Heat.
    tiny_dataset.splits["train"] = [
        Dialogue(
            id=f"s{i}",
            turns=[
                Turn(role="user", text="", items=["1"]),
                Turn(role="system", text="", items=["3"]),
            ],
        )
        for i in range(20)
    ]
    tiny_dataset.histories = {}
    cfg = SASRecConfig(epochs=40, hidden=16, max_len=5, batch_size=8, lr=0.01, dropout=0.0)
    path = train_sasrec(tiny_dataset, cfg, tmp_path / "ckpt")
    assert {p.name for p in path.iterdir()} == {"model.pt", "config.json", "metrics.json"}
    model = create_model("sasrec", tiny_dataset, {"checkpoint": str(path)})
    reply = model.respond(
        Dialogue(id="q", turns=[Turn(role="user", text="I liked Heat", items=["1"])])
    )
    assert reply.item_ids[0] == "3"
    assert model.config.hidden == 16  # architecture comes from the checkpoint
    empty = model.respond(Dialogue(id="q", turns=[Turn(role="user", text="hello")]))
    assert empty.trace[0].name == "fallback: popularity"


def test_sasrec_without_checkpoint_says_how_to_train(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="crs train sasrec --dataset tiny"):
        create_model("sasrec", tiny_dataset, {"checkpoint": str(tmp_path / "none")})


def test_sasrec_training_resumes_where_it_stopped_and_reports_progress(
    tiny_dataset, tmp_path, monkeypatch
):
    """A stopped run continues from its last finished epoch with the same command and ends with
    the weights an uninterrupted run gets; the progress file says how far it is."""
    import json

    import torch

    from backend.models import sasrec
    from backend.models.sasrec import SASRecConfig, train_sasrec

    cfg = dict(epochs=6, hidden=16, max_len=5, batch_size=1, lr=0.01, dropout=0.0)
    whole = train_sasrec(tiny_dataset, SASRecConfig(**cfg), tmp_path / "whole")

    progress = tmp_path / "progress.json"
    monkeypatch.setenv("CRS_PROGRESS_FILE", str(progress))
    calls = {"n": 0}
    real_loss = sasrec.sasrec_loss

    def stop_in_epoch_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 1:  # two windows per epoch here: stop inside the fourth epoch
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(sasrec, "sasrec_loss", stop_in_epoch_four)
    with pytest.raises(KeyboardInterrupt):
        train_sasrec(tiny_dataset, SASRecConfig(**cfg), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "train_state.pt").exists()
    assert json.loads(progress.read_text())["total"] == 12

    monkeypatch.setattr(sasrec, "sasrec_loss", real_loss)
    resumed = train_sasrec(tiny_dataset, SASRecConfig(**cfg), tmp_path / "resumed")
    assert not (resumed / "train_state.pt").exists()
    state = json.loads(progress.read_text())
    assert state["done"] == state["total"] == 12
    a = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_popularity_prior_is_tuned_on_dev_only(tiny_dataset, tmp_path, monkeypatch):
    """retrieval-pop's weight comes from dev: the test split is never read, and a dev split where
    the popular film is the answer makes the prior win."""
    import json

    from backend.data.base import Dataset
    from backend.models.retrieval import RetrievalPopConfig, tune_popularity_weight

    # Toy Story (2) is the most mentioned film in train; on dev the user asks about heists and
    # the recommender answers Toy Story every time.
    train = [
        Dialogue(
            id=f"t{i}",
            turns=[Turn(role="user", text="hi"), Turn(role="system", text="", items=["2"])],
        )
        for i in range(30)
    ]
    dev = [
        Dialogue(
            id=f"d{i}",
            turns=[
                Turn(role="user", text="a heist crew and a detective"),
                Turn(role="system", text="Toy Story!", items=["2"]),
            ],
        )
        for i in range(5)
    ]
    dataset = Dataset(
        name="tiny",
        catalog=tiny_dataset.catalog,
        splits={"train": train, "dev": dev, "test": tiny_dataset.splits["test"]},
    )
    real_split = Dataset.split

    def no_test(self, name):
        assert name != "test", "tuning read the test split"
        return real_split(self, name)

    monkeypatch.setattr(Dataset, "split", no_test)
    path = tune_popularity_weight(
        dataset, RetrievalPopConfig(), weights=(0.0, 1.0), out_dir=tmp_path
    )
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["tuned_on"] == "dev" and metrics["best_weight"] == 1.0
    assert metrics["by_weight"]["1.0"]["recall@1"] > metrics["by_weight"]["0.0"]["recall@1"]
    model = create_model("retrieval-pop", dataset, {"checkpoint": str(path)})
    assert model.config.popularity_weight == 1.0
    reply = model.respond(Dialogue(id="q", turns=[Turn(role="user", text="a heist crew")]))
    assert reply.item_ids[0] == "2"
    with pytest.raises(FileNotFoundError, match="crs train retrieval-pop --dataset tiny"):
        create_model("retrieval-pop", dataset, {"checkpoint": str(tmp_path / "none")})
