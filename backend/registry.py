"""The `CRSModel` protocol every system implements, and the registry that builds them by name.

The demo, the evaluation harness and the task generator only know this protocol: a model is made
from a name, a dataset (its catalog and training data) and a config, and answers a dialogue with a
`Reply`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from backend.data.base import Dataset
from backend.types import Dialogue, Reply, ScoredItem, Turn, UserHistory


@dataclasses.dataclass
class ModelConfig:
    """Fields every model config has; subclasses add their own (with a one-line reason)."""

    top_k: int = 50  # items returned in a Reply (Recall@50 needs 50)
    seed: int = 0


class Peers(Protocol):
    """The other models a server has loaded, for a model that calls experts (LLMCRS)."""

    def ready_models(self) -> list[str]:
        """Registered names of the models that can answer now (the caller's excluded)."""
        ...

    def respond(self, name: str, dialogue: Dialogue, history: UserHistory | None) -> Reply:
        """Model ``name``'s reply, run on that model's own worker."""
        ...


class CRSModel(ABC):
    """A conversational recommender: dialogue (+ optional user history) in, `Reply` out."""

    name: ClassVar[str]
    description: ClassVar[str]  # read by LLMCRS to choose experts, and shown in the demo
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    version: str = "1"
    # Requests the server runs at once; above 1 only for models that batch concurrent calls.
    max_concurrency: ClassVar[int] = 1

    def __init__(self, dataset: Dataset, config: ModelConfig | None = None):
        self.dataset = dataset
        self.catalog = dataset.catalog
        self.config = config or self.config_class()

    @abstractmethod
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        """Answer the last user turn of ``dialogue``."""

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        """Answer many dialogues; models that can batch (encoders, sequence models) override this."""
        histories = histories or [None] * len(dialogues)
        return [self.respond(d, h) for d, h in zip(dialogues, histories, strict=True)]

    def stream(
        self, dialogue: Dialogue, history: UserHistory | None = None
    ) -> Iterator[str | Reply]:
        """Yield text deltas, then the final `Reply`. Models with a streaming LLM override this."""
        reply = self.respond(dialogue, history)
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
        yield reply

    def use_peers(self, peers: Peers) -> None:
        """Called by the server once the model is loaded; models that manage experts keep it."""
        return None

    def reference_nll(
        self, dialogues: Sequence[Dialogue], references: Sequence[Turn]
    ) -> list[tuple[float, int]] | None:
        """Summed negative log-likelihood and token count of each reference reply given its
        dialogue, for perplexity; None for models without a language model of their own."""
        return None

    def save(self, path: Path) -> None:
        """Write the model's state and config under ``path`` (a directory)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config_dict(), indent=2))

    @classmethod
    def load(cls, path: Path, dataset: Dataset) -> CRSModel:
        """Rebuild a saved model; stateless models only need their config."""
        config = cls.config_class(**json.loads((path / "config.json").read_text()))
        return cls(dataset, config)

    def config_dict(self) -> dict[str, Any]:
        return {"model": self.name, **dataclasses.asdict(self.config)}

    # Helpers shared by the simple models.
    def _ranked(
        self, scores: dict[str, float] | list[tuple[str, float]], exclude: set[str]
    ) -> list[ScoredItem]:
        pairs = scores.items() if isinstance(scores, dict) else scores
        ranked = sorted(pairs, key=lambda p: -p[1])
        items = (
            ScoredItem(item_id=i, score=float(s), title=self.catalog[i].display_title)
            for i, s in ranked
        )
        return fresh_items(items, exclude, self.config.top_k)


def fresh_items(items: Iterable[ScoredItem], exclude: set[str], limit: int) -> list[ScoredItem]:
    """The first ``limit`` items not in ``exclude``, each item and each title once.

    A catalog may list one film under two ids (MovieLens has "Nightwatch (1997)" twice); a user
    sees a repeated title as a bug, so the lower-ranked copy goes. ``title`` empty = not checked.
    """
    kept: list[ScoredItem] = []
    seen_ids, seen_titles = set(exclude), set()
    for item in items:
        title = item.title.casefold()
        if item.item_id in seen_ids or (title and title in seen_titles):
            continue
        seen_ids.add(item.item_id)
        seen_titles.add(title)
        kept.append(item)
        if len(kept) >= limit:
            break
    return kept


_REGISTRY: dict[str, type[CRSModel]] = {}


def register(cls: type[CRSModel]) -> type[CRSModel]:
    """Class decorator: make a model available by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_models() -> None:
    # Importing the modules runs their @register decorators.
    from backend.models import (  # noqa: F401
        latentcrs,
        llm_rec,
        llm_zero_shot,
        llmcrs,
        pecrs,
        popularity,
        presales,
        retrieval,
        sasrec,
    )


def available_models() -> dict[str, type[CRSModel]]:
    _load_builtin_models()
    return dict(sorted(_REGISTRY.items()))


def model_class(name: str) -> type[CRSModel]:
    models = available_models()
    if name not in models:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(models)}")
    return models[name]


def build_config(cls: type[CRSModel], overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A config from defaults plus overrides; unknown keys are an error that lists the valid ones."""
    overrides = dict(overrides or {})
    valid = {f.name: f for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"{cls.name}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
        )
    return cls.config_class(**overrides)


def create_model(name: str, dataset: Dataset, config: dict[str, Any] | None = None) -> CRSModel:
    """Build model ``name`` for ``dataset``; trained models load their checkpoint here."""
    cls = model_class(name)
    return cls(dataset, build_config(cls, config))


def save_run_files(out_dir: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write a training run's ``config.json`` and ``metrics.json`` beside its checkpoint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def timed(fn: Callable[..., Reply]) -> Callable[..., Reply]:
    """Decorator for `respond`: fills ``Reply.seconds`` and ``Reply.model``."""

    def wrapper(self: CRSModel, *args: Any, **kwargs: Any) -> Reply:
        start = time.perf_counter()
        reply = fn(self, *args, **kwargs)
        reply.seconds = time.perf_counter() - start
        reply.model = reply.model or self.name
        return reply

    wrapper.__doc__ = fn.__doc__
    return wrapper
