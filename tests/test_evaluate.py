"""The evaluation harness on a hand-made dataset with fake models whose scores are known."""

import json
import math
from collections.abc import Sequence

import pytest

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.eval.evaluate import evaluate
from backend.registry import CRSModel
from backend.types import Dialogue, Interaction, Item, Reply, ScoredItem, Turn, UserHistory
from tests.test_metrics import DEFAULT_KEYS

FIXED_RANKING = ["2", "3", "4", "1", "5", "6"]


def build_dataset() -> Dataset:
    """Split "test": 5 evaluated recommender turns, 4 of them with one gold item each.

    Split "multi": one recommender turn that mentions two items.
    """
    items = [Item(id=str(i), title=f"Movie {i}", year=2000 + i) for i in range(1, 7)]
    d1 = Dialogue(id="d1", user_id="u1", turns=[
        Turn(role="user", text="I liked Movie 1", items=["1"]),
        Turn(role="system", text="Try Movie 3", items=["3"]),  # gold 3: rank 2 in FIXED_RANKING
        Turn(role="user", text="Seen it, something scary?"),
        Turn(role="system", text="Movie 4 is a classic", items=["4"]),  # rank 3
        Turn(role="user", text="Thanks"),
        Turn(role="system", text="Enjoy the movie!"),  # no item: text and presence only
    ])  # fmt: skip
    d2 = Dialogue(id="d2", user_id="u2", turns=[
        Turn(role="system", text="Hello! What do you like?"),  # first turn: not evaluated
        Turn(role="user", text="Something for kids"),
        Turn(role="system", text="Movie 2 it is", items=["2"]),  # rank 1
    ])  # fmt: skip
    d3 = Dialogue(id="d3", turns=[
        Turn(role="user", text="Any action?"),
        Turn(role="system", text="Movie 5 is great", items=["5"]),  # rank 5
    ])  # fmt: skip
    d4 = Dialogue(id="d4", turns=[
        Turn(role="user", text="Two movies please"),
        Turn(role="system", text="Movie 1 and Movie 4", items=["1", "4"]),  # ranks 4 and 3
    ])  # fmt: skip
    histories = {"u1": UserHistory(user_id="u1", interactions=[Interaction(item_id="1", rating=5)])}
    return Dataset(
        name="fake",
        catalog=Catalog(items, name="fake"),
        splits={"test": [d1, d2, d3], "multi": [d4]},
        histories=histories,
    )


class FixedModel(CRSModel):
    """Always the same ranking and text; records what it was asked."""

    name = "fixed"
    description = "Ranks the catalog in a fixed order whatever the dialogue; for harness tests."

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        self.batches: list[int] = []
        self.seen: list[tuple[str, int, UserHistory | None]] = []

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        self.seen.append((dialogue.id, len(dialogue.turns), history))
        items = [ScoredItem(item_id=i, score=-r) for r, i in enumerate(FIXED_RANKING)]
        return Reply(text="I recommend a movie", items=items, recommends=True)

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        self.batches.append(len(dialogues))
        return super().respond_batch(dialogues, histories)


class CheatModel(CRSModel):
    """Answers with the gold turn itself: its items first, its text, its presence."""

    name = "cheat"
    description = (
        "Looks up the gold next turn of every dialogue; a perfect score for harness tests."
    )

    def __init__(self, dataset: Dataset, split: str = "test"):
        super().__init__(dataset)
        self.answers = {(d.id, i): t for d in dataset.split(split) for i, t in enumerate(d.turns)}

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        gold = self.answers[(dialogue.id, len(dialogue.turns))]
        ranked = gold.items + [i for i in self.catalog.ids if i not in gold.items]
        items = [ScoredItem(item_id=i, score=-r) for r, i in enumerate(ranked)]
        return Reply(text=gold.text, items=items, recommends=bool(gold.items))


@pytest.fixture
def dataset() -> Dataset:
    return build_dataset()


def test_perfect_model_scores_one(dataset):
    result = evaluate(CheatModel(dataset), dataset, "test", progress=False)
    m = result.metrics
    assert result.n == 5 and m["n_rec"] == 4 and m["n_text"] == 5
    for key in ("recall@1", "recall@10", "recall@50", "ndcg@10", "mrr@50", "bleu-1", "rouge-1"):
        assert m[key] == pytest.approx(1.0), key
    assert m["item-f1"] == 1.0
    assert m["coverage"] == 4


def test_fixed_ranking_gives_hand_computed_metrics(dataset):
    result = evaluate(FixedModel(dataset), dataset, "test", progress=False)
    m = result.metrics
    # Gold ranks 2, 3, 1, 5.
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@10"] == 1.0
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1 / 5) / 4)
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(4) + 1 + 1 / math.log2(6)) / 4
    assert m["ndcg@10"] == pytest.approx(expected_ndcg)
    assert m["coverage"] == 1
    # Always "recommends": TP = 4, FP = 1 (d1's last turn), FN = 0.
    assert m["item-precision"] == pytest.approx(0.8)
    assert m["item-recall"] == 1.0
    assert m["item-f1"] == pytest.approx(2 * 0.8 / 1.8)
    # One text repeated five times: 4 unique words, 20 words in all.
    assert m["distinct-1"] == pytest.approx(4 / 20)
    assert m["distinct-1/resp"] == pytest.approx(4 / 5)


def test_custom_ks(dataset):
    result = evaluate(
        FixedModel(dataset), dataset, "test", progress=False, recall_ks=(1, 3, 5), rank_ks=(5,)
    )
    m = result.metrics
    assert m["recall@3"] == pytest.approx(3 / 4)
    assert m["recall@5"] == 1.0
    assert "recall@10" not in m and "mrr@5" in m


def test_a_turn_with_two_items_gives_two_samples(dataset):
    result = evaluate(FixedModel(dataset), dataset, "multi", progress=False)
    assert result.n == 1 and result.metrics["n_rec"] == 2
    assert result.metrics["recall@1"] == 0.0
    assert result.metrics["mrr@10"] == pytest.approx((1 / 4 + 1 / 3) / 2)


def test_limit_keeps_the_first_dialogues(dataset):
    model = FixedModel(dataset)
    result = evaluate(model, dataset, "test", limit=1, progress=False)
    assert result.n == 3 and result.metrics["n_rec"] == 2
    assert {d for d, _, _ in model.seen} == {"d1"}
    assert result.config["limit"] == 1
    empty = evaluate(FixedModel(dataset), dataset, "test", limit=0, progress=False)
    assert empty.n == 0 and empty.metrics == {"n_rec": 0, "n_text": 0}


def test_contexts_batches_and_histories(dataset):
    model = FixedModel(dataset)
    evaluate(model, dataset, "test", batch_size=2, use_history=True, progress=False)
    assert model.batches == [2, 2, 1]
    # Each context is the dialogue before the recommender turn; d2's first turn is skipped.
    assert [(d, n) for d, n, _ in model.seen] == [
        ("d1", 1),
        ("d1", 3),
        ("d1", 5),
        ("d2", 2),
        ("d3", 1),
    ]
    histories = [h.user_id if h else None for _, _, h in model.seen]
    assert histories == ["u1", "u1", "u1", None, None]

    model = FixedModel(dataset)
    evaluate(model, dataset, "test", use_history=False, progress=False)
    assert all(h is None for _, _, h in model.seen)


def test_json_shape_and_save(dataset, tmp_path):
    result = evaluate(FixedModel(dataset), dataset, "test", progress=True)
    out = result.to_json()
    assert set(out) == {"model", "dataset", "split", "n", "metrics", "config", "seconds"}
    assert (out["model"], out["dataset"], out["split"], out["n"]) == ("fixed", "fake", "test", 5)
    assert out["config"] == {
        "model": "fixed",
        "top_k": 50,
        "seed": 0,
        "limit": None,
        "use_history": False,
        "rec_turns_only": False,
    }
    assert set(out["metrics"]) == DEFAULT_KEYS
    assert isinstance(out["seconds"], float) and out["seconds"] >= 0
    path = tmp_path / "nested" / "dir" / "result.json"
    result.save(path)
    text = path.read_text()
    assert json.loads(text) == out
    assert text.startswith('{\n  "model": "fixed"')  # indent 2


def test_predictions_file(dataset, tmp_path):
    result = evaluate(CheatModel(dataset), dataset, "test", progress=False)
    path = tmp_path / "preds" / "p.jsonl"
    result.write_predictions(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 5
    assert lines[0] == {
        "dialogue_id": "d1",
        "turn": 1,
        "gold": ["3"],
        "top10": ["3", "1", "2", "4", "5", "6"],
        "text": "Try Movie 3",
        "reference": "Try Movie 3",
        "recommends": True,
    }
    turns = [(r["dialogue_id"], r["turn"]) for r in lines]
    assert turns == [("d1", 1), ("d1", 3), ("d1", 5), ("d2", 2), ("d3", 1)]
    assert lines[2]["gold"] == [] and lines[2]["recommends"] is False


def test_unknown_split_and_bad_arguments(dataset):
    with pytest.raises(KeyError, match="no split 'dev'"):
        evaluate(FixedModel(dataset), dataset, "dev", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(FixedModel(dataset), dataset, "test", batch_size=0, progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(FixedModel(dataset), dataset, "test", limit=-1, progress=False)


def test_a_stopped_evaluation_continues_from_its_journal(dataset, tmp_path):
    """Stopped after its first batch and started again, an evaluation asks the model only for
    the turns it had not scored, and ends with the metrics of an unbroken run."""
    whole = evaluate(CheatModel(dataset), dataset, "test", batch_size=1, progress=False)
    journal = tmp_path / "eval.jsonl"

    class StopsAfterOneBatch(CheatModel):
        def respond_batch(self, dialogues, histories=None):
            if getattr(self, "answered", False):
                raise KeyboardInterrupt  # Ctrl-C, or the session ending
            self.answered = True
            return super().respond_batch(dialogues, histories)

    with pytest.raises(KeyboardInterrupt):
        evaluate(StopsAfterOneBatch(dataset), dataset, "test", batch_size=1, journal=journal)
    assert len(journal.read_text().splitlines()) == 2  # the settings, then the one scored turn

    asked: list[str] = []

    class Counting(CheatModel):
        def respond(self, dialogue, history=None):
            asked.append(dialogue.id)
            return super().respond(dialogue, history)

    resumed = evaluate(Counting(dataset), dataset, "test", batch_size=1, journal=journal)
    assert len(asked) == whole.n - 1
    assert resumed.metrics == whole.metrics and resumed.predictions == whole.predictions
    assert not journal.exists()  # a finished run leaves its result, not its journal


def test_models_never_see_a_dialogue_s_hidden_meta(dataset):
    """Golden and rejected items, per-turn goals and labels describe the future of a dialogue:
    the contexts handed to a model carry none of them."""
    hidden = {"golden": ["i1"], "rejected": ["i2"], "goals": [["rec_might_likes"]], "target": "i1"}
    for dialogue in dataset.split("test"):
        dialogue.meta.update(hidden, source="fixture")
    model = FixedModel(dataset)
    seen: list[dict] = []
    original = model.respond

    def respond(dialogue, history=None):
        seen.append(dict(dialogue.meta))
        return original(dialogue, history)

    model.respond = respond
    evaluate(model, dataset, "test", progress=False)
    assert seen and all(meta == {"source": "fixture"} for meta in seen)
