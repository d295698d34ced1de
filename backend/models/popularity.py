"""Popularity baseline: the most-rated (or most-mentioned) items the user has not mentioned yet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from backend.models.templates import recommendation_text
from backend.registry import CRSModel, ModelConfig, register, timed
from backend.types import Dialogue, Reply, TraceStep, UserHistory


@dataclass
class PopularityConfig(ModelConfig):
    split: str = "train"  # counts come from this split only, so test mentions never leak in


def item_counts(dataset, split: str = "train") -> Counter[str]:
    """Ratings per item from user histories, plus mentions per item in the dialogues of ``split``."""
    counts: Counter[str] = Counter()
    for history in dataset.histories.values():
        counts.update(i.item_id for i in history.interactions)
    for dialogue in dataset.splits.get(split, []):
        for turn in dialogue.turns:
            counts.update(turn.items)
    return counts


@register
class Popularity(CRSModel):
    name = "popularity"
    description = (
        "Recommends the most popular items (most rated or most mentioned in training dialogues) "
        "that the user has not mentioned. Ignores preferences; a lower bound."
    )
    config_class = PopularityConfig

    def __init__(self, dataset, config: PopularityConfig | None = None):
        super().__init__(dataset, config)
        counts = item_counts(dataset, self.config.split)
        # Items never seen still rank, after the counted ones, in catalog order.
        self.scores = {item_id: float(counts.get(item_id, 0)) for item_id in self.catalog.ids}

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        exclude = set(dialogue.mentioned_items())
        if history is not None:
            exclude |= {i.item_id for i in history.interactions}
        ranked = [
            s.model_copy(
                update={"why": f"Popular: rated or mentioned {self.scores[s.item_id]:.0f} times"}
            )
            if rank < 6
            else s
            for rank, s in enumerate(self._ranked(self.scores, exclude))
        ]
        text = recommendation_text([self.catalog[s.item_id] for s in ranked[:3]])
        trace = [TraceStep(name="exclude mentioned", input=sorted(exclude), output=len(ranked))]
        return Reply(text=text, items=ranked, recommends=bool(ranked), trace=trace)
