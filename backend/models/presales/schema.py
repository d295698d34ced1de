"""The four pre-sales task examples (App. A of the LLM ⇄ CRS paper) and how their labels are
written: understanding = (attribute, value) pairs of the current utterance, elicitation = the
attribute (and value) the staff asks about next, recommendation = one of 20 candidates,
generation = the staff's response from the context, the attributes to ask and the items."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASKS = ("understand", "elicit", "recommend", "generate")
ATTRIBUTES = ("genre", "year", "decade", "director", "actor")  # the movie analogue of U-NEED's keys
NONE = "none"  # how an utterance with no (attribute, value) pair is written


@dataclass(frozen=True, order=True)
class Pair:
    """One semantic frame; ``value`` is "" when only the attribute is named ("which actor?")."""

    attr: str
    value: str = ""

    def text(self) -> str:
        return f"{self.attr}: {self.value}" if self.value else self.attr


def format_pairs(pairs: list[Pair]) -> str:
    """``genre: Horror; actor: Tom Hanks``, or "none" (U-NEED's ``attr：value；…`` in English)."""
    return "; ".join(p.text() for p in pairs) or NONE


def parse_pairs(text: str) -> list[Pair]:
    """The pairs a model wrote, in the `format_pairs` style (full-width ：； are read too); unknown
    attributes and repeats are dropped, so a rambling answer scores only what it got right."""
    pairs: dict[Pair, None] = {}
    for part in text.replace("；", ";").replace("\n", ";").split(";"):
        attr, _, value = part.replace("：", ":").partition(":")
        attr = attr.strip().casefold()
        if attr in ATTRIBUTES:
            pairs[Pair(attr, value.strip().strip(".").strip())] = None
    return list(pairs)


@dataclass
class ContextTurn:
    """An earlier turn with its annotations: the needs it states (``[understand]``), the
    attributes the staff asked there (``[elicit]``) and the items it recommended (``[recommend]``)."""

    role: str
    text: str
    items: list[str] = field(default_factory=list)
    needs: list[Pair] = field(default_factory=list)
    asked: list[Pair] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)


@dataclass
class Example:
    """One task instance cut from a dialogue at turn ``turn``.

    understand: ``current`` is the utterance, ``label`` its pairs. elicit: ``label`` the pairs of
    the staff's question (values may be ""). recommend: ``gold`` among ``candidates`` (20 item
    ids, the order they are lettered A-T). generate: ``label`` the attributes to ask, ``items``
    the items to recommend, ``reference`` the staff's words.
    """

    task: str
    dataset: str
    split: str
    dialogue_id: str
    user_id: str
    turn: int
    context: list[ContextTurn]
    current: str = ""  # understand: the utterance whose pairs are asked for
    current_role: str = "user"
    label: list[Pair] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    gold: str = ""
    items: list[str] = field(default_factory=list)
    reference: str = ""
    mentioned: list[str] = field(default_factory=list)  # items named before; never recommended

    @property
    def example_id(self) -> str:
        return f"{self.dataset}/{self.dialogue_id}/{self.turn}/{self.task}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Example:
        def pairs(rows: list[Any]) -> list[Pair]:
            return [Pair(**p) if isinstance(p, dict) else Pair(*p) for p in rows]

        context = [
            ContextTurn(**{**t, "needs": pairs(t["needs"]), "asked": pairs(t["asked"])})
            for t in row["context"]
        ]
        return cls(**{**row, "context": context, "label": pairs(row["label"])})
