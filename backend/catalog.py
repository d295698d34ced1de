"""The item catalog: lookup by id, item text for encoders, fuzzy title search, filters."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property

from rapidfuzz import fuzz, process

from backend.types import Item

# The metadata fields of an item's text after its title, in PECRS's order (its Table 6).
ITEM_FIELDS = ("actors", "directors", "genres", "plot")
_YEAR_RE = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLE_RE = re.compile(r"^(.*), (the|a|an)$", re.IGNORECASE)


def normalize_title(title: str) -> str:
    """Lower-case, strip accents, the year and punctuation; 'Matrix, The' -> 'the matrix'."""
    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    title = _YEAR_RE.sub("", title.strip())
    # MovieLens writes "Usual Suspects, The"; dialogues write "The Usual Suspects".
    m = _ARTICLE_RE.match(title)
    if m:
        title = f"{m.group(2)} {m.group(1)}"
    title = re.sub(r"[^a-z0-9 ]+", " ", title.lower())
    return re.sub(r"\s+", " ", title).strip()


def split_year(title: str) -> tuple[str, int | None]:
    """'Heat (1995)' -> ('Heat', 1995); titles without a year keep None."""
    m = _YEAR_RE.search(title)
    if not m:
        return title.strip(), None
    return title[: m.start()].strip(), int(m.group(1))


class Catalog:
    """An ordered collection of items with the lookups every model needs."""

    def __init__(self, items: Iterable[Item], name: str = "catalog"):
        self.name = name
        self._items: dict[str, Item] = {}
        for item in items:
            if item.id in self._items:
                raise ValueError(f"{name}: duplicate item id {item.id!r}")
            self._items[item.id] = item
        self.ids: list[str] = list(self._items)
        self.index: dict[str, int] = {item_id: i for i, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items.values())

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self._items[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the {self.name} catalog") from None

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    def item_text(self, item_id: str, title_only: bool = False, drop: Iterable[str] = ()) -> str:
        """Item as one string, PECRS style: title [SEP] actors [SEP] directors [SEP] genres [SEP] plot.

        ``drop`` empties the named fields (of ``ITEM_FIELDS``) and keeps the layout, as PECRS's
        Table 6 prunes them; ``title_only`` is the title alone.
        """
        item = self[item_id]
        if title_only:
            return item.display_title
        unknown = set(drop) - set(ITEM_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown item fields {sorted(unknown)}; choose from {', '.join(ITEM_FIELDS)}"
            )
        fields = {
            "actors": ", ".join(item.people.get("star", ())),
            "directors": ", ".join(item.people.get("director", ())),
            "genres": ", ".join(item.genres),
            "plot": item.description,
        }
        kept = [("" if name in drop else value) for name, value in fields.items()]
        return " [SEP] ".join([item.display_title, *kept])

    @cached_property
    def _search_keys(self) -> list[str]:
        return [normalize_title(item.title) for item in self._items.values()]

    @cached_property
    def _exact(self) -> dict[tuple[str, int | None], str]:
        exact: dict[tuple[str, int | None], str] = {}
        for item, key in zip(self._items.values(), self._search_keys, strict=True):
            exact.setdefault((key, item.year), item.id)
            exact.setdefault((key, None), item.id)
        return exact

    def search(self, query: str, limit: int = 5, cutoff: float = 80.0) -> list[tuple[str, float]]:
        """Fuzzy title search: ``[(item_id, score 0-100), ...]`` best first.

        An exact normalised title (and year, when the query has one) wins outright; otherwise
        rapidfuzz's token-set ratio ranks titles (a title inside a longer phrase still scores 100,
        a single shared word such as "the" does not), ties broken towards the matching year.
        """
        title, year = split_year(query)
        key = normalize_title(title)
        if not key:
            return []
        hit = self._exact.get((key, year)) or (
            self._exact.get((key, None)) if year is None else None
        )
        if hit is not None and limit == 1:
            return [(hit, 100.0)]
        matches = process.extract(
            key,
            self._search_keys,
            scorer=fuzz.token_set_ratio,
            limit=limit * 3,
            score_cutoff=cutoff,
        )
        # (score, year matches): an exact title first, then the score, the year breaking ties
        # so that "Heat (1986)" picks the 1986 film among two equally close "Heat"s.
        results: dict[str, tuple[float, bool]] = {}
        if hit is not None:
            results[hit] = (101.0, True)
        for _, score, idx in matches:
            item_id = self.ids[idx]
            results.setdefault(
                item_id, (score, year is not None and self._items[item_id].year == year)
            )
        ranked = sorted(results.items(), key=lambda kv: (-kv[1][0], not kv[1][1]))
        return [(item_id, min(100.0, score)) for item_id, (score, _) in ranked[:limit]]

    def match(self, query: str, cutoff: float = 85.0) -> str | None:
        """The single best catalog id for a title, or None when nothing is close enough."""
        found = self.search(query, limit=1, cutoff=cutoff)
        return found[0][0] if found else None

    def filter(self, predicate: Callable[[Item], bool]) -> list[str]:
        """Ids of the items for which ``predicate`` holds, in catalog order."""
        return [item.id for item in self._items.values() if predicate(item)]

    def filled_from(self, other: Catalog) -> tuple[Catalog, int]:
        """This catalog with each item's missing cast, crew and plot taken from the same film
        (title and year) in ``other``; also the number of items that gained something."""
        items, filled = [], 0
        for item in self._items.values():
            source = other._exact.get((normalize_title(item.title), item.year))
            if source is not None and item.year is not None:
                donor = other[source]
                update = {}
                if not item.people and donor.people:
                    update["people"] = donor.people
                if not item.description and donor.description:
                    update["description"] = donor.description
                if update:
                    item, filled = item.model_copy(update=update), filled + 1
            items.append(item)
        return Catalog(items, name=self.name), filled

    def with_genre(self, genre: str) -> list[str]:
        genre = genre.lower()
        return self.filter(lambda item: any(g.lower() == genre for g in item.genres))
