"""The expert models LLMCRS manages (§3.3), by sub-task.

Recommendation experts are the registered CRS models: registering a new one puts its name and
description in the matching prompt with no other change. When served, the server's already
loaded models answer (through their own workers); otherwise an expert is loaded here when first
chosen. The other sub-tasks have built-in experts over the catalog's metadata: a question about
the most informative attribute among the current candidates, an explanation from the item's
metadata, and (as in the paper) no expert for item detail search, which reads the catalog.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.explain import asked_decade, asked_genres, why
from backend.registry import CRSModel, Peers, available_models, create_model
from backend.types import Dialogue, Item, Reply, ScoredItem, TraceStep, UserHistory

log = logging.getLogger(__name__)

ATTRIBUTE_QUESTION = "attribute-question"
METADATA_EXPLAINER = "metadata-explainer"
CATALOG = "catalog"
BUILTIN = {
    "elicit": [
        (
            ATTRIBUTE_QUESTION,
            "Asks the user to choose a value of the attribute (genre or decade) that splits the "
            "current candidate movies most evenly.",
        )
    ],
    "explain": [
        (
            METADATA_EXPLAINER,
            "Explains a movie from its metadata: the genres and decade the user asked for and "
            "the movies they named that it resembles.",
        )
    ],
    "detail": [],  # the catalog is read directly, no expert (§3.3)
}
_ATTRIBUTE_WORDS = {
    "directors": re.compile(r"\b(direct\w*|director|made it|who made)\b", re.I),
    "actors": re.compile(r"\b(star\w*|actor|actress|cast|who('s| is) in|plays?)\b", re.I),
    "year": re.compile(r"\b(when|year|old|new|released?)\b", re.I),
    "plot": re.compile(r"\b(about|plot|story|happens)\b", re.I),
    "genres": re.compile(r"\b(genre|kind of|type of|scary|funny)\b", re.I),
}


@dataclass
class ExpertOutput:
    """What an expert returns: its text, a ranking, the item the text is about, its trace, and
    whether the text recommends."""

    text: str
    items: list[ScoredItem] = field(default_factory=list)
    focus: Item | None = None
    trace: list[TraceStep] = field(default_factory=list)
    recommends: bool = False


def recommendation_experts(selected: str, exclude: str) -> list[tuple[str, str]]:
    """[ID, description] of the registered models (those named in ``selected``, or all)."""
    names = [n.strip() for n in selected.split(",") if n.strip()]
    models = available_models()
    unknown = [n for n in names if n not in models]
    if unknown:
        raise ValueError(
            f"llmcrs: unknown expert(s) {', '.join(unknown)}; registered: {', '.join(models)}"
        )
    return [
        (name, cls.description)
        for name, cls in models.items()
        if name != exclude and (not names or name in names)
    ]


class ExpertPool:
    """Runs experts: the server's loaded models first, else models loaded here once."""

    def __init__(self, dataset: Dataset, loader: Callable[[str], CRSModel] | None = None):
        self.dataset = dataset
        self.catalog: Catalog = dataset.catalog
        self.peers: Peers | None = None
        self._loaded: dict[str, CRSModel] = {}
        self._failed: dict[str, str] = {}
        self._loader = loader or (lambda name: create_model(name, dataset))

    def can_run(self, name: str) -> bool:
        """Served: the server has it ready (no copies are loaded here); else it has not failed."""
        if self.peers is not None:
            return name in self.peers.ready_models()
        return name not in self._failed

    def unavailable(self, name: str) -> str:
        """Why expert ``name`` cannot run ("" when it can, as far as is known)."""
        return self._failed.get(name, "")

    def recommend(
        self, name: str, dialogue: Dialogue, history: UserHistory | None
    ) -> tuple[Reply, str]:
        """Expert ``name``'s reply, and where it ran ("served" or "loaded here")."""
        if self.peers is not None and name in self.peers.ready_models():
            return self.peers.respond(name, dialogue, history), "served"
        if name not in self._loaded:
            try:
                self._loaded[name] = self._loader(name)
            except Exception as err:  # a missing checkpoint: this expert sits out, noted
                self._failed[name] = f"{type(err).__name__}: {err}"
                raise
        return self._loaded[name].respond(dialogue, history), "loaded here"

    # ------------------------------------------------------------------ built-in experts

    def ask_attribute(self, dialogue: Dialogue, candidates: list[ScoredItem]) -> ExpertOutput:
        """Ask about the attribute whose values split the top candidates most evenly (highest
        entropy), among those the user has not given yet."""
        user = " ".join(t.text for t in dialogue.turns if t.role == "user")
        items = [self.catalog[s.item_id] for s in candidates[:20] if s.item_id in self.catalog]
        values: dict[str, Counter[str]] = {}
        if not asked_genres(user):
            values["genre"] = Counter(g for item in items for g in item.genres[:2])
        if asked_decade(user) is None:
            values["decade"] = Counter(
                f"the {item.year // 10 * 10}s" for item in items if item.year
            )
        entropy = {
            name: -sum(
                c / sum(counts.values()) * math.log(c / sum(counts.values()))
                for c in counts.values()
            )
            for name, counts in values.items()
            if len(counts) >= 2
        }
        if not entropy:
            text = "Is there a movie you loved recently? I'll find something like it."
            return ExpertOutput(text, candidates, trace=[TraceStep(name="attribute", output=None)])
        attribute = max(entropy, key=lambda a: entropy[a])
        top = [
            v.lower() if attribute == "genre" else v for v, _ in values[attribute].most_common(3)
        ]
        choices = ", ".join(top[:-1]) + f" or {top[-1]}"
        text = (
            f"Are you in the mood for {choices}?"
            if attribute == "genre"
            else f"Would you like a film from {choices}?"
        )
        step = TraceStep(
            name="attribute",
            input={a: dict(c.most_common(5)) for a, c in values.items()},
            output={"attribute": attribute, "entropy": round(entropy[attribute], 3)},
        )
        return ExpertOutput(text, candidates, trace=[step])

    def explain(self, dialogue: Dialogue, item: Item) -> ExpertOutput:
        """Why ``item`` fits, from its metadata and what the user said."""
        reason = why(item, dialogue, self.catalog)
        facts = facts_of(item)
        text = f"{item.display_title}: {reason}." if reason else f"{item.display_title} is {facts}."
        return ExpertOutput(text, focus=item)

    def detail(self, dialogue: Dialogue, item: Item) -> ExpertOutput:
        """The fact the user asked about, read from the catalog (no expert)."""
        last = dialogue.turns[-1].text if dialogue.turns else ""
        asked = [name for name, pattern in _ATTRIBUTE_WORDS.items() if pattern.search(last)]
        text = detail_text(item, asked[0] if asked else "")
        return ExpertOutput(text, focus=item, trace=[TraceStep(name="attribute", output=asked[:1])])


def facts_of(item: Item) -> str:
    """ "a crime/thriller film from 1995, directed by Michael Mann" (what the catalog holds)."""
    genres = "/".join(g.lower() for g in item.genres[:2])
    article = "an" if genres[:1] in tuple("aeiou") else "a"
    text = f"{article} {genres} film" if genres else "a film"
    if item.year:
        text += f" from {item.year}"
    directors = item.people.get("director", ())
    if directors:
        text += f", directed by {', '.join(directors[:2])}"
    return text


def detail_text(item: Item, attribute: str) -> str:
    """The catalog's answer about ``item``'s ``attribute`` (all it holds when not given or known)."""
    title = item.display_title
    stars = ", ".join(item.people.get("star", ())[:3])
    directors = ", ".join(item.people.get("director", ())[:2])
    answers = {
        "directors": f"{title} was directed by {directors}." if directors else "",
        "actors": f"{title} stars {stars}." if stars else "",
        "year": f"{title} came out in {item.year}." if item.year else "",
        "plot": f"{title}: {item.description}" if item.description else "",
        "genres": f"{title} is {facts_of(item)}." if item.genres else "",
    }
    if answers.get(attribute):
        return answers[attribute]
    return f"{title} is {facts_of(item)}." + (f" It stars {stars}." if stars else "")
