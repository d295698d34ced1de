"""Finding movie titles in free text and linking them to catalog ids.

Used to map an LLM's named titles to a ranking (LLM-REDIAL §4.2's fuzzy matching) and to link
what a user types ("I loved Heat (1995)") to items, so models know what was already mentioned.
"""

from __future__ import annotations

import re

from rapidfuzz import fuzz

from backend.catalog import Catalog, normalize_title, split_year
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


def closest_title(name: str, catalog: Catalog, cutoff: float = 85.0) -> tuple[str, float] | None:
    """(item id, score) of the title most like ``name`` as a whole, or None below ``cutoff``.

    `Catalog.search` proposes candidates; each must also pass the token-sort ratio of the whole
    titles (years aside), so "The Night of the Carnal Profit" does not match "The Watch" through
    the subset of words that gives the token-set ratio 100.
    """
    key = normalize_title(split_year(name)[0])
    for item_id, _ in catalog.search(name, limit=10, cutoff=cutoff):
        score = fuzz.token_sort_ratio(key, normalize_title(catalog[item_id].title))
        if score >= cutoff:
            return item_id, score
    return None


def match_titles(
    text: str, catalog: Catalog, cutoff: float = 85.0, whole_title: bool = False
) -> list[tuple[str, str, float]]:
    """(matched variant, item id, match score) per title mention that matches the catalog.

    ``whole_title`` scores variants with `closest_title` (the whole title must match) instead of
    `Catalog.search` alone (a title's words inside the variant suffice).
    """
    matches, seen = [], set()
    for variants in candidate_titles(text):
        best: tuple[str, str, float] | None = None
        for variant in variants:
            if whole_title:
                hit = closest_title(variant, catalog, cutoff)
                found = [hit] if hit else []
            else:
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


_BULLET = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•])\s*")
_YEAR = re.compile(r"\(\d{4}\)")


def match_title_list(
    text: str, catalog: Catalog, cutoff: float = 85.0
) -> list[tuple[str, str, float]]:
    """(name, item id, match score) for each title of a generated list, in order, without repeats.

    A line (numbering, bullets, quotes and bold stripped) is matched whole (`closest_title`) when
    it reads as one title: it ends with its only "(YYYY)", or has no year, at most 12 words and no
    closing punctuation. Other lines, and whole lines that match nothing, go through
    `match_titles` (whole titles only), which finds "Title (Year)" and quoted names in prose.
    """
    matches, seen = [], set()
    for line in text.splitlines():
        name = _BULLET.sub("", line).strip(" *\"'“”_")
        if not name:
            continue
        years = _YEAR.findall(name)
        one_title = (len(years) == 1 and name.endswith(years[0])) or (
            not years and len(name.split()) <= 12 and name[-1] not in ".!?:"
        )
        hit = closest_title(name, catalog, cutoff) if one_title else None
        line_matches = (
            [(name, *hit)] if hit else match_titles(line, catalog, cutoff, whole_title=True)
        )
        for match in line_matches:
            if match[1] not in seen:
                seen.add(match[1])
                matches.append(match)
    return matches
