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
