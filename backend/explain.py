"""One-line reasons for a recommendation, read off the catalog and the dialogue (never invented).

A card's "why" must be true, so it only states what the data says: which genre the user asked
for that the item has, which mentioned film it shares genres with, the decade asked for.
"""

from __future__ import annotations

import re

from backend.catalog import Catalog
from backend.types import Dialogue, Item, ScoredItem

# Words people use for a genre -> the genre names catalogs use (MovieLens, ReDial/IMDb).
GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "horror": ("Horror",),
    "scary": ("Horror", "Thriller"),
    "scarier": ("Horror", "Thriller"),
    "creepy": ("Horror", "Thriller"),
    "frightening": ("Horror",),
    "funny": ("Comedy",),
    "funnier": ("Comedy",),
    "comedy": ("Comedy",),
    "comedies": ("Comedy",),
    "laugh": ("Comedy",),
    "romantic": ("Romance",),
    "romance": ("Romance",),
    "love story": ("Romance",),
    "action": ("Action",),
    "adventure": ("Adventure",),
    "kids": ("Children's", "Children", "Family", "Animation"),
    "children": ("Children's", "Children", "Family", "Animation"),
    "family": ("Children's", "Family", "Animation"),
    "animated": ("Animation",),
    "cartoon": ("Animation",),
    "sci-fi": ("Sci-Fi", "Science Fiction"),
    "science fiction": ("Sci-Fi", "Science Fiction"),
    "space": ("Sci-Fi", "Science Fiction"),
    "thriller": ("Thriller",),
    "suspense": ("Thriller", "Mystery"),
    "mystery": ("Mystery",),
    "detective": ("Mystery", "Crime", "Film-Noir"),
    "crime": ("Crime",),
    "gangster": ("Crime",),
    "heist": ("Crime",),
    "war": ("War",),
    "western": ("Western",),
    "cowboy": ("Western",),
    "musical": ("Musical", "Music"),
    "documentary": ("Documentary",),
    "drama": ("Drama",),
    "fantasy": ("Fantasy",),
    "noir": ("Film-Noir",),
}
_WORD = {w: re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE) for w in GENRE_WORDS}
_DECADE = re.compile(r"\b(?:19|20)?(\d)0'?s\b")


def genre_mentions(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """(word, the genres it means) for each genre word in the text."""
    return [(word, GENRE_WORDS[word]) for word, pattern in _WORD.items() if pattern.search(text)]


def asked_genres(text: str) -> list[str]:
    """Genre names the text asks for, in catalog spelling."""
    found: dict[str, None] = {}
    for _, genres in genre_mentions(text):
        found.update(dict.fromkeys(genres))
    return list(found)


def asked_decade(text: str) -> int | None:
    """The decade a request names ("from the 1950s", "80s movies"), as its first year."""
    match = _DECADE.search(text)
    if match is None:
        return None
    digit = int(match.group(1))
    century = 2000 if digit <= 2 and "20" + match.group(1) in text else 1900
    return century + 10 * digit


def why(item: Item, dialogue: Dialogue, catalog: Catalog) -> str:
    """A short true reason ``item`` fits ``dialogue``, or "" when the data shows none."""
    user_text = " ".join(t.text for t in dialogue.turns if t.role == "user")
    reasons = []
    wanted = [g for g in asked_genres(user_text) if g in item.genres]
    if wanted:
        reasons.append(" and ".join(g.lower() for g in wanted[:2]) + ", as you asked")
    decade = asked_decade(user_text)
    if decade and item.year and decade <= item.year < decade + 10:
        reasons.append(f"from the {decade}s")
    # Only films the user named: the system's own earlier suggestions are no evidence of taste.
    named = dict.fromkeys(i for t in dialogue.turns if t.role == "user" for i in t.items)
    liked = [catalog[i] for i in named if i in catalog]
    for other in liked:
        shared = [g for g in item.genres if g in other.genres]
        if len(shared) >= 2 or (shared and len(other.genres) == 1):
            reasons.append(f"{'/'.join(g.lower() for g in shared[:2])} like {other.display_title}")
            break
    text = "; ".join(reasons)
    return text[:1].upper() + text[1:]


def with_reasons(
    items: list[ScoredItem], dialogue: Dialogue, catalog: Catalog, top: int = 6
) -> list[ScoredItem]:
    """``items`` with `why` filled for the first ``top`` (the ones shown as cards)."""
    return [
        s.model_copy(update={"why": why(catalog[s.item_id], dialogue, catalog)})
        if rank < top and not s.why and s.item_id in catalog
        else s
        for rank, s in enumerate(items)
    ]
