"""The offline evaluation harness: run a `CRSModel` over every recommender turn of a split.

For each dialogue and each system turn i > 0, the model sees ``dialogue.prefix(i)`` and its
`Reply` is scored against turn i: ranking metrics when the turn mentions items (one sample per
gold item), text metrics on every system turn, and item presence (``Reply.recommends`` versus
``bool(turn.items)``) on every system turn.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from backend.data.base import Dataset
from backend.eval.metrics import DEFAULT_RANK_KS, DEFAULT_RECALL_KS, MetricAccumulator
from backend.journal import Journal
from backend.registry import CRSModel
from backend.types import Dialogue, Turn, UserHistory

log = logging.getLogger(__name__)

PREDICTION_TOP_N = 10  # ids kept per turn in the predictions file


@dataclass
class EvalResult:
    """Metrics of one model on one split, plus the per-turn predictions behind them."""

    model: str
    dataset: str
    split: str
    n: int  # recommender turns evaluated
    metrics: dict[str, float]
    config: dict[str, Any]
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: {"model", "dataset", "split", "n", "metrics", "config", "seconds"}."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "metrics": self.metrics,
            "config": self.config,
            "seconds": self.seconds,
        }

    def save(self, path: Path | str) -> None:
        """Write `to_json` to ``path`` (indent 2), creating parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def write_predictions(self, path: Path | str) -> None:
        """Write one JSON line per evaluated turn: dialogue_id, turn, gold, top10, text, reference,
        recommends."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.predictions:
                f.write(json.dumps(row) + "\n")


def recommender_turns(
    dialogues: Sequence[Dialogue], rec_only: bool = False
) -> list[tuple[Dialogue, int]]:
    """(dialogue, turn index) of every system turn that is not a dialogue's first turn;
    ``rec_only`` keeps only the turns that mention an item (the turns that recommend)."""
    return [
        (dialogue, i)
        for dialogue in dialogues
        for i, turn in enumerate(dialogue.turns)
        if i > 0 and turn.role == "system" and (turn.items or not rec_only)
    ]


def evaluate(
    model: CRSModel,
    dataset: Dataset,
    split: str,
    limit: int | None = None,
    batch_size: int = 32,
    use_history: bool = False,
    rec_turns_only: bool = False,
    progress: bool = True,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    rank_ks: Sequence[int] = DEFAULT_RANK_KS,
    journal: Path | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the recommender turns of ``dataset``'s ``split``.

    ``limit`` keeps the first N dialogues; ``use_history`` passes each dialogue's user history
    (``dataset.histories.get(user_id)``) to the model; ``rec_turns_only`` evaluates only the
    turns whose gold mentions items (LLM-REDIAL §4.2: predict the item of the next response),
    so text metrics cover those turns too; turns go to ``model.respond_batch`` in chunks of
    ``batch_size``. ``recall_ks`` / ``rank_ks`` choose the K of Recall@K and of
    NDCG@K / MRR@K. With ``journal`` (a JSONL file), every scored turn is appended there as it
    comes, and a run stopped part-way continues from it when started again with the same
    settings (see `Journal`). Raises KeyError for an unknown split.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    start = time.perf_counter()
    dialogues = dataset.split(split)
    if limit is not None:
        dialogues = dialogues[:limit]
    jobs = recommender_turns(dialogues, rec_only=rec_turns_only)
    log.info(
        "evaluating %s on %s/%s: %d dialogues, %d recommender turns",
        model.name,
        dataset.name,
        split,
        len(dialogues),
        len(jobs),
    )

    acc = MetricAccumulator(recall_ks=recall_ks, rank_ks=rank_ks)
    predictions: list[dict[str, Any]] = []
    settings = {
        "model": model.name,
        "config": model.config_dict(),
        "dataset": dataset.name,
        "split": split,
        "limit": limit,
        "batch_size": batch_size,
        "use_history": use_history,
        "rec_turns_only": rec_turns_only,
    }
    log_ = Journal(journal, settings) if journal else None
    depth = max([*recall_ks, *rank_ks, PREDICTION_TOP_N])
    done = (
        log_.load(lambda j, r: (r["dialogue_id"], r["turn"]) == (jobs[j][0].id, jobs[j][1]))
        if log_
        else []
    )

    def score(dialogue: Dialogue, i: int, record: dict[str, Any]) -> None:
        gold: Turn = dialogue.turns[i]
        acc.add_ranking(record["ranked"], gold.items)
        acc.add_text(record["text"], gold.text)
        acc.add_presence(record["recommends"], bool(gold.items))
        if record["nll"] is not None:
            acc.add_nll(*record["nll"])
        predictions.append(
            {
                "dialogue_id": dialogue.id,
                "turn": i,
                "gold": gold.items,
                "top10": record["ranked"][:PREDICTION_TOP_N],
                "text": record["text"],
                "reference": gold.text,
                "recommends": record["recommends"],
            }
        )

    for (dialogue, i), record in zip(jobs, done, strict=False):
        score(dialogue, i, record)
    with tqdm(
        total=len(jobs),
        initial=len(done),
        desc=f"eval {model.name}",
        unit="turn",
        disable=not progress,
    ) as bar:
        for offset in range(len(done), len(jobs), batch_size):
            chunk = jobs[offset : offset + batch_size]
            contexts = [dialogue.prefix(i) for dialogue, i in chunk]
            histories = [_history(dataset, d, split) for d, _ in chunk] if use_history else None
            replies = model.respond_batch(contexts, histories)
            nll = model.reference_nll(contexts, [d.turns[i] for d, i in chunk])
            if len(replies) != len(chunk):
                raise RuntimeError(
                    f"{model.name}.respond_batch returned {len(replies)} replies for {len(chunk)} dialogues"
                )
            records = [
                {
                    "dialogue_id": dialogue.id,
                    "turn": i,
                    "ranked": reply.item_ids[:depth],
                    "text": reply.text,
                    "recommends": reply.recommends,
                    "nll": None if nll is None else list(nll[j]),
                }
                for j, ((dialogue, i), reply) in enumerate(zip(chunk, replies, strict=True))
            ]
            for (dialogue, i), record in zip(chunk, records, strict=True):
                score(dialogue, i, record)
            if log_:
                log_.append(records)
            bar.update(len(chunk))

    result = EvalResult(
        model=model.name,
        dataset=dataset.name,
        split=split,
        n=len(jobs),
        metrics=acc.result(),
        config={
            **model.config_dict(),
            "limit": limit,
            "use_history": use_history,
            "rec_turns_only": rec_turns_only,
        },
        seconds=time.perf_counter() - start,
        predictions=predictions,
    )
    log.info("%s on %s/%s: %s", model.name, dataset.name, split, result.metrics)
    if log_:
        log_.close()
    return result


def _history(dataset: Dataset, dialogue: Dialogue, split: str) -> UserHistory | None:
    """The dialogue's user history as a model may read it on ``split`` (a held-out view keeps
    one per split), or None when the dialogue has no user or the user no history."""
    histories = dataset.extra.get("context_histories", {}).get(split, dataset.histories)
    return histories.get(dialogue.user_id) if dialogue.user_id else None
