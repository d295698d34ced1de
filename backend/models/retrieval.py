"""Dense retrieval baseline: MiniLM embeddings of item text against the dialogue so far."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.encoder import get_encoder
from backend.explain import with_reasons
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, ModelConfig, register, timed
from backend.settings import get_settings
from backend.types import Dialogue, Reply, TraceStep, UserHistory

log = logging.getLogger(__name__)


@dataclass
class RetrievalConfig(ModelConfig):
    context_turns: int = 4  # older turns dilute the query more than they help
    title_only: bool = False  # encode "title (year)" instead of the full metadata string
    # Weight of the mentioned items' own vectors in the query: "more like these" beats their names.
    item_weight: float = 1.0
    faiss_min_items: int = 2000  # below this a numpy dot product is as fast as an index
    device: str = "auto"


@register
class Retrieval(CRSModel):
    name = "retrieval"
    description = (
        "Embeds the recent dialogue and every item's text (title, people, genres, plot) with "
        "all-MiniLM-L6-v2 and recommends the nearest items. Good at content and genre requests; "
        "knows nothing about popularity or users."
    )
    config_class = RetrievalConfig

    def __init__(self, dataset, config: RetrievalConfig | None = None):
        super().__init__(dataset, config)
        self.encoder = get_encoder(self.config.device)
        self.item_vectors = self._item_vectors()
        self.index = None
        if len(self.catalog) >= self.config.faiss_min_items:
            import faiss

            self.index = faiss.IndexFlatIP(self.item_vectors.shape[1])
            self.index.add(self.item_vectors)

    def _item_vectors(self) -> np.ndarray:
        """Encode every item once; cached on disk keyed by the exact item texts."""
        texts = [
            self.catalog.item_text(i, title_only=self.config.title_only) for i in self.catalog.ids
        ]
        digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
        path = get_settings().cache / "embeddings" / f"minilm-{self.dataset.name}-{digest}.npy"
        if path.exists():
            return np.load(path)
        log.info("encoding %d items of %s (cached at %s)", len(texts), self.dataset.name, path)
        vectors = self.encoder.encode(texts, show_progress=True).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors

    def query_text(self, dialogue: Dialogue) -> str:
        return dialogue.as_text(last_n=self.config.context_turns)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is not None:
            return self.index.search(queries, k)
        scores = queries @ self.item_vectors.T
        top = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, top, axis=1), top

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        histories = histories or [None] * len(dialogues)
        queries = [self.query_text(d) for d in dialogues]
        vectors = self.encoder.encode(queries).astype(np.float32)
        for row, dialogue in zip(vectors, dialogues, strict=True):
            known = [self.catalog.index[i] for i in dialogue.mentioned_items() if i in self.catalog]
            if known and self.config.item_weight:
                row += self.config.item_weight * self.item_vectors[known].mean(axis=0)
                row /= np.linalg.norm(row)
        # Over-fetch so that excluding already-mentioned items still leaves top_k.
        excludes = [set(d.mentioned_items()) for d in dialogues]
        k = min(len(self.catalog), self.config.top_k + max(map(len, excludes), default=0))
        all_scores, all_idx = self._search(vectors, k)
        replies = []
        for dialogue, query, exclude, scores, idx in zip(
            dialogues, queries, excludes, all_scores, all_idx, strict=True
        ):
            pairs = [
                (self.catalog.ids[j], float(s)) for j, s in zip(idx, scores, strict=True) if j >= 0
            ]
            ranked = with_reasons(self._ranked(pairs, exclude), dialogue, self.catalog)
            text = recommendation_text([self.catalog[s.item_id] for s in ranked[:3]])
            trace = [TraceStep(name="query", input=query, output=[s.title for s in ranked[:5]])]
            replies.append(
                Reply(
                    text=text, items=ranked, recommends=bool(ranked), trace=trace, model=self.name
                )
            )
        return replies

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]
