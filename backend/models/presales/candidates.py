"""The 20 candidates of needs-based recommendation, lettered A-T as the paper gives them to the
LLM ("select from the candidate products A-T", Table 7), and reading a letter back.

A candidate set is the gold film plus 19 others that share a genre with it, drawn in proportion
to popularity (so the task is not "spot the film of the right genre" or "spot the famous one"),
never a film the dialogue mentioned, shuffled so the gold's letter is uniform.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from backend.catalog import Catalog
from backend.types import Item

LETTERS = "ABCDEFGHIJKLMNOPQRST"
N_CANDIDATES = len(LETTERS)
# A letter standing alone: "(C)", "C.", "C:" or at the end ("A good pick is C": not the article).
_LETTER = re.compile(r"(?:^|[\s(\[])([A-Za-z])(?:[).:\]]|$)")
_NAMED = re.compile(r"\b(?:option|candidate|letter)\s+([A-Za-z])\b", re.IGNORECASE)


def candidate_set(
    gold: str,
    catalog: Catalog,
    counts: Counter[str],
    exclude: Iterable[str],
    rng: random.Random,
) -> list[str]:
    """``gold`` and 19 popularity-weighted films sharing a genre with it, shuffled."""
    banned = set(exclude) | {gold}
    genres = set(catalog[gold].genres) if gold in catalog else set()
    pool = [i.id for i in catalog if i.id not in banned and genres & set(i.genres)]
    if len(pool) < N_CANDIDATES - 1:  # a film without genres: any film will do
        pool = [i.id for i in catalog if i.id not in banned]
    weights = [counts.get(i, 0) + 1 for i in pool]
    picked: dict[str, None] = {}
    while len(picked) < min(N_CANDIDATES - 1, len(pool)):  # a tiny catalog gives fewer
        picked[rng.choices(pool, weights)[0]] = None
    out = [gold, *picked]
    rng.shuffle(out)
    return out


def describe(item: Item, people: int = 2) -> str:
    """One compact line of what the catalog knows about a film (the paper's "attributes and
    attribute values corresponding to each candidate")."""
    parts = [item.display_title]
    if item.genres:
        parts.append("genre " + ", ".join(g.lower() for g in item.genres[:3]))
    for role, word in (("director", "directed by"), ("star", "starring")):
        names = item.people.get(role, ())[:people]
        if names:
            parts.append(f"{word} {', '.join(names)}")
    return "; ".join(parts)


def lettered(candidates: Sequence[str], catalog: Catalog) -> str:
    """``A: Heat (1995); genre crime ... [SEP] B: ...`` (Table 7's layout)."""
    return " [SEP] ".join(
        f"{letter}: {describe(catalog[item_id], people=1)}"  # one name each: 20 lines add up
        for letter, item_id in zip(LETTERS, candidates, strict=False)
    )


def parse_letter(text: str, n: int = N_CANDIDATES) -> int | None:
    """The index of the candidate a written answer picks ("C", "C.", "Answer: (C)", "c"), or None
    when it names no letter among the first ``n``."""
    text = text.strip()
    if not text:
        return None
    answer = re.split(r"answer\s*[:：]", text, flags=re.IGNORECASE)[-1].strip()
    bare = answer.strip(" ().:*\"'[]")
    letter = bare if len(bare) == 1 else None
    for pattern in (_NAMED, _LETTER):
        match = None if letter else pattern.search(answer)
        letter = letter or (match.group(1) if match else None)
    if letter is None or letter.upper() not in LETTERS[:n]:
        return None
    return LETTERS.index(letter.upper())
