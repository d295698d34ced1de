"""Serving only: the needs understood in a live dialogue, checked against the user's own words,
become hard constraints on the catalog before the CRS ranks it.

The study scores the paper's tasks as they are; in the demo a CRS whose whole-catalog ranking is
near its popularity prior (Table 3 at this scale) would answer "a scary film from the 80s" with a
1990s drama. So the understanding pairs go through LatentCRS's check (a genre or decade is kept
only where the user's words say it, one they said and the model missed is added by rule, negated
genre words never count) and the films that meet them are the ones ranked; a requirement no 5
films meet is relaxed, last first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from backend.catalog import Catalog
from backend.models.latentcrs.filter import (
    Constraints,
    Vocabulary,
    check_answer,
    hard_filter,
    user_words,
)
from backend.models.presales.schema import Pair
from backend.types import Dialogue

MIN_KEPT = 5  # fewer films than this meeting every need relaxes the last need


@dataclass
class Grounded:
    allowed: set[str]  # the films (not yet mentioned) that meet the kept needs
    constraints: Constraints
    relaxed: list[str]

    def trace(self) -> dict[str, object]:
        c = self.constraints
        return {
            "needs": c.describe(),
            "understood and said": c.from_llm,
            "said, added by rule": c.added_by_rule,
            "understood, not said (dropped)": c.dropped,
            "relaxed (too few films)": self.relaxed,
            "films that meet them": len(self.allowed),
        }


def ground(
    understood: list[Pair], dialogue: Dialogue, catalog: Catalog, vocabulary: Vocabulary
) -> Grounded:
    """The films that meet the understood needs the user's words support."""
    decade = next((p.value for p in understood if p.attr == "decade" and p.value), None)
    answer = json.dumps(
        {"genres": [p.value for p in understood if p.attr == "genre" and p.value], "decade": decade}
    )
    constraints = check_answer(
        answer, user_words(dialogue, catalog), set(vocabulary.genres), vocabulary.people
    )
    mentioned = set(dialogue.mentioned_items())
    films = [item for item in catalog if item.id not in mentioned]
    allowed, relaxed = hard_filter(films, constraints, MIN_KEPT)
    return Grounded(allowed, constraints, relaxed)
