"""Core types every part of CRS Arena speaks: items, dialogues, user histories and replies.

They are pydantic models so that the HTTP backend, the database and the CLI serialise them the
same way (``model_dump_json`` / ``model_validate_json``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "system"]


class Item(BaseModel):
    """One recommendable thing (a movie here). ``id`` is a string in every dataset."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    year: int | None = None
    genres: tuple[str, ...] = ()
    # Role -> names, e.g. {"director": ("Will Gluck",), "star": ("Mila Kunis",)}.
    people: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    description: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def display_title(self) -> str:
        """Title with the year, as people write it in dialogues: ``Heat (1995)``."""
        if self.year and f"({self.year})" not in self.title:
            return f"{self.title} ({self.year})"
        return self.title


class Turn(BaseModel):
    """One utterance. ``items`` are the catalog ids mentioned in it, in order of mention."""

    role: Role
    text: str
    items: list[str] = Field(default_factory=list)


# Dialogue.meta keys a model may see in a context (where the dialogue came from); see `prefix`.
PUBLIC_META = frozenset({"source", "split", "dialog_id"})


class Dialogue(BaseModel):
    id: str
    turns: list[Turn] = Field(default_factory=list)
    user_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def prefix(self, n_turns: int) -> Dialogue:
        """The dialogue as it stood before turn ``n_turns`` (the context for that turn).

        Only ``PUBLIC_META`` keys come along: the rest (golden and rejected items, per-turn goals
        and labels, a simulated user's target) is hidden state no model may see.
        """
        meta = {k: v for k, v in self.meta.items() if k in PUBLIC_META}
        return Dialogue(id=self.id, turns=self.turns[:n_turns], user_id=self.user_id, meta=meta)

    def as_text(
        self, last_n: int | None = None, names: tuple[str, str] = ("User", "System")
    ) -> str:
        """The (last ``last_n``) turns as "User: ..." / "System: ..." lines, for prompts and encoders."""
        turns = self.turns if last_n is None else self.turns[-last_n:]
        return "\n".join(f"{names[t.role == 'system']}: {t.text}" for t in turns)

    def mentioned_items(self) -> list[str]:
        """All item ids mentioned so far, first mention order, without repeats."""
        seen: dict[str, None] = {}
        for turn in self.turns:
            for item_id in turn.items:
                seen.setdefault(item_id, None)
        return list(seen)


class Interaction(BaseModel):
    item_id: str
    rating: float
    time: float = 0.0


class UserHistory(BaseModel):
    """A user's time-ordered interactions; likes are ratings >= 4, dislikes <= 2 (LLM-REDIAL App. B)."""

    user_id: str
    interactions: list[Interaction] = Field(default_factory=list)
    like_threshold: float = 4.0
    dislike_threshold: float = 2.0

    @property
    def liked(self) -> list[Interaction]:
        return [i for i in self.interactions if i.rating >= self.like_threshold]

    @property
    def disliked(self) -> list[Interaction]:
        return [i for i in self.interactions if i.rating <= self.dislike_threshold]


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str = ""
    why: str = ""  # a one-line reason the model gives for this item, shown on its card


class TraceStep(BaseModel):
    """A named step of a model's reasoning, shown in the demo's trace panel."""

    name: str
    input: Any = None
    output: Any = None
    seconds: float = 0.0


class Reply(BaseModel):
    """What a CRS says back: text, a ranking of items, and how it got there."""

    text: str
    items: list[ScoredItem] = Field(default_factory=list)
    # Whether the text itself recommends something (PECRS's item-presence decision).
    recommends: bool = False
    trace: list[TraceStep] = Field(default_factory=list)
    model: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def item_ids(self) -> list[str]:
        return [s.item_id for s in self.items]
