"""Finding movie titles in free text and linking them to catalog ids.

Used to map an LLM's named titles to a ranking (LLM-REDIAL §4.2's fuzzy matching) and to link
what a user types ("I loved Heat (1995)") to items, so models know what was already mentioned.
"""

from __future__ import annotations

import re

from backend.catalog import Catalog
from backend.types import Turn

# Up to eight words before "(YYYY)": the title is some suffix of them ("we loved Heat (1995)").
_TITLE_YEAR = re.compile(r"((?:[^\s()\"*:,.!?]+ ){0,7}[^\s()\"*:,.!?]+)\s*\((\d{4})\)")
_QUOTED = re.compile(r"[\"“*_]+([^\"”*_\n]{2,80})[\"”*_]+")
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*(.+?)\s*(?:[-–:].*)?$", re.MULTILINE)


def candidate_titles(text: str) -> list[list[str]]:
    """Title mentions in a reply, each as its variants, most specific first.

    "Title (Year)" gives every word suffix before the year ("love Heat (1995)", "Heat (1995)");
    quoted or bold names and list lines give themselves.
    """
    found: list[tuple[int, list[str]]] = []
    for m in _TITLE_YEAR.finditer(text):
        words = m.group(1).split()
        found.append(
            (m.start(), [f"{' '.join(words[i:])} ({m.group(2)})" for i in range(len(words))])
        )
    for pattern in (_QUOTED, _LIST_LINE):
        for m in pattern.finditer(text):
            name = m.group(1).strip(' *"')
            if len(name) >= 2:
                found.append((m.start(1), [name]))
    mentions, seen = [], set()
    for _, variants in sorted(found, key=lambda f: f[0]):
        if variants[-1] not in seen:
            seen.add(variants[-1])
            mentions.append(variants)
    return mentions


def match_titles(text: str, catalog: Catalog, cutoff: float = 85.0) -> list[tuple[str, str, float]]:
    """(matched variant, item id, match score) per title mention that matches the catalog."""
    matches, seen = [], set()
    for variants in candidate_titles(text):
        best: tuple[str, str, float] | None = None
        for variant in variants:
            found = catalog.search(variant, limit=1, cutoff=cutoff)
            # Strictly better only: on ties the longer, earlier variant is kept.
            if found and (best is None or found[0][1] > best[2]):
                best = (variant, found[0][0], found[0][1])
        if best and best[1] not in seen:
            seen.add(best[1])
            matches.append(best)
    return matches


def link_user_turn(turn: Turn, catalog: Catalog, cutoff: float = 90.0) -> Turn:
    """The turn with ``items`` filled from titles in its text, when it names none yet."""
    if turn.items:
        return turn
    items = [item_id for _, item_id, _ in match_titles(turn.text, catalog, cutoff)]
    return turn.model_copy(update={"items": items}) if items else turn
