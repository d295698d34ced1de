"""Dense retrieval baselines: MiniLM embeddings of item text against the dialogue so far.

``retrieval`` ranks by cosine alone. ``retrieval-pop`` adds a popularity prior,
``popularity_weight · log(1 + count)`` with counts from the train split, whose weight
``crs train retrieval-pop --dataset D`` chooses on the dev split (the honest strong baseline of
issue 14: on ReDial dev it doubles recall). The prior rides in the index as one extra dimension
(item ``[v, w·log(1+count)]``, query ``[q, 1]``), so exact search stays one inner product.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from backend.data.base import Dataset
from backend.encoder import get_encoder
from backend.explain import with_reasons
from backend.models.popularity import item_counts
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, ModelConfig, register, save_run_files, timed
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
    popularity_weight: float = 0.0  # score = cosine + weight · log(1 + train count)


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
        counts = item_counts(dataset)
        self.log_popularity = np.log1p(
            np.array([counts.get(i, 0) for i in self.catalog.ids], dtype=np.float32)
        )
        self.index = None
        if len(self.catalog) >= self.config.faiss_min_items:
            import faiss

            self.index = faiss.IndexFlatIP(self.item_vectors.shape[1] + 1)
            self.index.add(self._with_prior(self.item_vectors, self.config.popularity_weight))

    def _with_prior(self, item_vectors: np.ndarray, weight: float) -> np.ndarray:
        """Item vectors with the weighted log-popularity as one more dimension."""
        prior = (weight * self.log_popularity)[:, None].astype(np.float32)
        return np.hstack([item_vectors, prior])

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
            ones = np.ones((len(queries), 1), dtype=np.float32)
            return self.index.search(np.hstack([queries, ones]), k)
        scores = self.scores(queries, self.config.popularity_weight)
        top = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, top, axis=1), top

    def scores(self, queries: np.ndarray, popularity_weight: float) -> np.ndarray:
        """Every item's score for every query: cosine plus the weighted popularity prior."""
        return queries @ self.item_vectors.T + popularity_weight * self.log_popularity

    def query_vectors(self, dialogues: Sequence[Dialogue]) -> np.ndarray:
        """The dialogue text, encoded, moved toward the vectors of the items it mentions."""
        vectors = self.encoder.encode([self.query_text(d) for d in dialogues]).astype(np.float32)
        for row, dialogue in zip(vectors, dialogues, strict=True):
            known = [self.catalog.index[i] for i in dialogue.mentioned_items() if i in self.catalog]
            if known and self.config.item_weight:
                row += self.config.item_weight * self.item_vectors[known].mean(axis=0)
                row /= np.linalg.norm(row)
        return vectors

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        histories = histories or [None] * len(dialogues)
        queries = [self.query_text(d) for d in dialogues]
        vectors = self.query_vectors(dialogues)
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


# ----------------------------------------------------------------------------- retrieval + popularity

POPULARITY_WEIGHTS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


@dataclass
class RetrievalPopConfig(RetrievalConfig):
    # Negative: use the weight `crs train retrieval-pop` chose on dev (its checkpoint folder).
    popularity_weight: float = -1.0
    checkpoint: str = ""  # folder; empty = CRS_HOME/checkpoints/retrieval-pop/<dataset>


def default_checkpoint(dataset_name: str) -> Path:
    return get_settings().checkpoints / "retrieval-pop" / dataset_name


@register
class RetrievalPop(Retrieval):
    name = "retrieval-pop"
    description = (
        "Dense retrieval (all-MiniLM-L6-v2) plus a popularity prior whose weight is tuned on the "
        "dev split: content match first, and among close matches the films people know."
    )
    config_class = RetrievalPopConfig

    def __init__(self, dataset, config: RetrievalPopConfig | None = None):
        config = config or RetrievalPopConfig()
        if config.popularity_weight < 0:
            path = Path(config.checkpoint or default_checkpoint(dataset.name)) / "config.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no tuned popularity weight at {path}; run `crs train retrieval-pop "
                    f"--dataset {dataset.name}` (or give --set popularity_weight=W)"
                )
            config.popularity_weight = float(json.loads(path.read_text())["popularity_weight"])
        super().__init__(dataset, config)


def tune_popularity_weight(
    dataset: Dataset,
    config: RetrievalPopConfig | None = None,
    weights: Sequence[float] = POPULARITY_WEIGHTS,
    split: str = "dev",
    out_dir: Path | None = None,
) -> Path:
    """Choose the popularity weight with the best mean R@1/10/50 on ``split`` (dev: never test);
    save it as the `retrieval-pop` checkpoint's config, with every weight's figures as metrics."""
    from backend.eval.evaluate import recommender_turns
    from backend.eval.metrics import MetricAccumulator

    config = config or RetrievalPopConfig()
    start = time.perf_counter()
    shared = {f: v for f, v in asdict(config).items() if f in RetrievalConfig.__dataclass_fields__}
    model = Retrieval(dataset, RetrievalConfig(**{**shared, "popularity_weight": 0.0}))
    jobs = recommender_turns(dataset.split(split), rec_only=True)
    if not jobs:
        raise ValueError(f"{dataset.name}/{split} has no recommending turns to tune on")
    contexts = [dialogue.prefix(i) for dialogue, i in jobs]
    queries = np.vstack(
        [model.query_vectors(contexts[b : b + 256]) for b in range(0, len(contexts), 256)]
    )
    figures: dict[str, dict[str, float]] = {}
    for weight in weights:
        acc = MetricAccumulator(rank_ks=())
        for b in range(0, len(contexts), 256):
            scores = model.scores(queries[b : b + 256], weight)
            for row, context, (dialogue, i) in zip(
                scores, contexts[b : b + 256], jobs[b : b + 256], strict=False
            ):
                for item_id in context.mentioned_items():
                    if item_id in model.catalog:
                        row[model.catalog.index[item_id]] = -np.inf
                top = np.argpartition(-row, min(50, len(row) - 1))[:50]
                ranked = [
                    model.catalog.ids[j] for j in top[np.argsort(-row[top])] if row[j] > -np.inf
                ]
                acc.add_ranking(ranked, dialogue.turns[i].items)
        result = acc.result()
        result["mean"] = float(np.mean([result[f"recall@{k}"] for k in (1, 10, 50)]))
        figures[str(weight)] = result
        log.info("popularity weight %g on %s: %s", weight, split, result)
    best = max(weights, key=lambda w: figures[str(w)]["mean"])
    out_dir = out_dir or Path(config.checkpoint or default_checkpoint(dataset.name))
    chosen = {**asdict(config), "popularity_weight": best}
    save_run_files(
        out_dir,
        {"model": "retrieval-pop", "dataset": dataset.name, **chosen},
        {
            "tuned_on": split,
            "turns": len(jobs),
            "best_weight": best,
            "by_weight": figures,
            "seconds": time.perf_counter() - start,
        },
    )
    return out_dir
