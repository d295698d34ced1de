"""Dialogue templates (§2.4.2): sequences of sub-goals, one entry per utterance, 6–16 utterances
with 1–3 recommendations, where every recommendation but the last is rejected.

The paper designs its 168 templates by hand; here they are composed from a few hand-written blocks
(opening, rejected round, accepted round, closing), every combination whose length is 6–16 kept.
A template names its items by role ("opening", "rec1", ...) and says which user collection each
is drawn from; :func:`fill` binds them to a user's items.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from backend.generate.goals import GOALS, SLOT_RE
from backend.generate.profiles import UserProfile

MIN_UTTERANCES, MAX_UTTERANCES = 6, 16
MAX_RECOMMENDATIONS = 3


@dataclass(frozen=True)
class Step:
    """One utterance of a template: its sub-goals and the item it is about (a binding name)."""

    goals: tuple[str, ...]
    item: str | None = None

    @property
    def speaker(self) -> str:
        return GOALS[self.goals[0]].speaker


@dataclass(frozen=True)
class Template:
    id: str
    steps: tuple[Step, ...]
    # binding name -> slot of the collection it is drawn from, e.g. {"rec1": "USER_HIS_LIKES"}
    items: tuple[tuple[str, str], ...]

    @property
    def n_recommendations(self) -> int:
        return sum(name.startswith("rec") for name, _ in self.items)

    def __len__(self) -> int:
        return len(self.steps)


def _s(*goals: str, item: str | None = None) -> Step:
    return Step(tuple(goals), item)


# Openings: the user greets with a liked or disliked movie; the agent responds; the user asks.
OPENINGS = {
    "mood": (_s("respond_mood", "ask_preference"), _s("ask_rec")),
    "review": (_s("respond_other_review", item="opening"), _s("ask_rec")),
    "chat": (
        _s("respond_simply", "ask_preference"),
        _s("chitchat_user"),
        _s("chitchat_system", "lead_to_rec"),
        _s("ask_rec"),
    ),
}
# A rejected round recommends a movie the user already liked (seen it) or disliked:
# slot -> (recommend goal, introduce goal, the reason the user gives).
_REJECTED_GOALS = {
    "USER_HIS_LIKES": ("rec_his_likes", "intro_likes_review", "reason_seen"),
    "USER_HIS_DISLIKES": ("rec_his_dislikes", "intro_dislikes_review", "reason_dislike_review"),
}
REJECTED = [(slot, size) for slot in _REJECTED_GOALS for size in ("short", "detail")]


def rejected_round(slot: str, size: str, item: str) -> tuple[Step, ...]:
    """Recommend, (ask and answer for details,) reject with the reason."""
    recommend, introduce, reason = _REJECTED_GOALS[slot]
    if size == "short":
        return (_s(recommend, introduce, item=item), _s("reject_no_reason", reason, item=item))
    return (
        _s(recommend, introduce, item=item),
        _s("ask_detail", item=item),
        _s("respond_detail", item=item),
        _s("reject_thanks", reason, item=item),
    )


# The accepted round recommends a MIGHT_LIKES item: the golden recommendation.
ACCEPTED = {
    "reason": lambda r: (
        _s("rec_might_likes", "intro_mightlikes_review", item=r),
        _s("accept_reason", item=r),
    ),
    "detail": lambda r: (
        _s("rec_might_likes", "intro_mightlikes_review", item=r),
        _s("ask_detail", item=r),
        _s("respond_detail", item=r),
        _s("accept_thanks", item=r),
    ),
    "interest": lambda r: (
        _s("rec_might_likes", "intro_mightlikes_review", item=r),
        _s("express_interest", item=r),
        _s("respond_other_review", item=r),
        _s("accept_no_reason", item=r),
    ),
}
CLOSINGS = {
    "end": (_s("end"),),
    "more": (_s("ask_more"), _s("lead_to_end", "thanks"), _s("end")),
    "thanks": (_s("respond_simply"), _s("thanks")),
}


def _kind(slot: str) -> str:
    return slot.removeprefix("USER_HIS_").lower()


def build_templates() -> list[Template]:
    """Every block combination with 1–3 recommendations and 6–16 utterances, in a fixed order."""
    templates: list[Template] = []
    for greeting in ("USER_HIS_LIKES", "USER_HIS_DISLIKES"):
        opener = _s(
            "greet_likes" if greeting == "USER_HIS_LIKES" else "greet_dislikes", item="opening"
        )
        for n_recs in range(1, MAX_RECOMMENDATIONS + 1):
            rejected_options = itertools.product(REJECTED, repeat=n_recs - 1)
            for rejected, opening, accepted, closing in itertools.product(
                list(rejected_options), OPENINGS, ACCEPTED, CLOSINGS
            ):
                steps = [opener, *OPENINGS[opening]]
                items = [("opening", greeting)]
                for r, key in enumerate(rejected, start=1):
                    steps += rejected_round(*key, f"rec{r}")
                    items.append((f"rec{r}", key[0]))
                steps += ACCEPTED[accepted](f"rec{n_recs}")
                items.append((f"rec{n_recs}", "USER_MIGHT_LIKES"))
                steps += CLOSINGS[closing]
                if MIN_UTTERANCES <= len(steps) <= MAX_UTTERANCES:
                    # e.g. "likes-mood-dislikes/short-reason-end"
                    rounds = [f"{_kind(slot)}/{size}" for slot, size in rejected]
                    name = "-".join([_kind(greeting), opening, *rounds, accepted, closing])
                    templates.append(
                        Template(f"t{len(templates):03d}-{name}", tuple(steps), tuple(items))
                    )
    return templates


TEMPLATES: list[Template] = build_templates()


@dataclass(frozen=True)
class FilledStep:
    """A template step bound to one user: the speaker, goals, and the item it is about."""

    speaker: str
    goals: tuple[str, ...]
    item_id: str | None
    text: str  # the sub-goal texts with slots filled, as the whole-dialogue prompt shows them


class NotEnoughItems(ValueError):
    """The user has too few items in a collection the template draws from."""


def bind_items(
    template: Template, profile: UserProfile, golden: str, rng: random.Random
) -> dict[str, str]:
    """Binding name -> item id: the golden item for the accepted round, distinct random items otherwise."""
    pools = {"USER_HIS_LIKES": profile.likes, "USER_HIS_DISLIKES": profile.dislikes}
    used = {golden}
    bound: dict[str, str] = {}
    for name, slot in template.items:
        if slot == "USER_MIGHT_LIKES":
            bound[name] = golden
            continue
        choices = [i for i in pools[slot] if i not in used]
        if not choices:
            raise NotEnoughItems(f"user {profile.user_id} has no unused item for {slot}")
        bound[name] = rng.choice(choices)
        used.add(bound[name])
    return bound


def fill(
    template: Template, bound: dict[str, str], title: dict[str, str], review: dict[str, str]
) -> list[FilledStep]:
    """The template with every slot replaced by the bound item's title or review text."""
    steps = []
    for step in template.steps:
        item_id = bound[step.item] if step.item else None
        text = "; ".join(_fill_slots(GOALS[g].text, item_id, title, review) for g in step.goals)
        steps.append(FilledStep(step.speaker, step.goals, item_id, text))
    return steps


def _fill_slots(
    text: str, item_id: str | None, title: dict[str, str], review: dict[str, str]
) -> str:
    def value(match: re.Match[str]) -> str:
        if item_id is None:
            raise ValueError(f"{text!r} has slot {match.group(1)} but the step has no item")
        return review[item_id] if match.group(1).endswith("REVIEW") else f'"{title[item_id]}"'

    return SLOT_RE.sub(value, text)
