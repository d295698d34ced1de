"""Data preprocessing of LLM-REDIAL Appendix B: ratings -> LIKES, DISLIKES and MIGHT_LIKES per user.

Works on any ratings (user, item, rating, time) and any catalog: MovieLens-100K by default, a CSV
of ratings otherwise. MovieLens has no review text, so an item's metadata stands in for the
review slots (:func:`review_text`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from backend.catalog import Catalog
from backend.data.base import DataFormatError, Dataset
from backend.types import Interaction, Item, UserHistory


@dataclass(frozen=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    time: float


@dataclass
class UserProfile:
    """One user's time-ordered collections (item ids), as App. B builds them."""

    user_id: str
    likes: list[str] = field(default_factory=list)
    dislikes: list[str] = field(default_factory=list)
    might_likes: list[str] = field(default_factory=list)  # the pool of final golden recommendations
    # item id -> (rating, time), for the history a model may see (likes and dislikes only).
    ratings: dict[str, tuple[float, float]] = field(default_factory=dict)

    def history(self) -> UserHistory:
        """LIKES and DISLIKES as a time-ordered history; MIGHT_LIKES stay hidden (they are the answers)."""
        seen = [*self.likes, *self.dislikes]
        interactions = [
            Interaction(item_id=i, rating=self.ratings[i][0], time=self.ratings[i][1]) for i in seen
        ]
        interactions.sort(key=lambda x: (x.time, x.item_id))
        return UserHistory(user_id=self.user_id, interactions=interactions)


@dataclass(frozen=True)
class PreprocessConfig:
    min_interactions: int = 10  # users and items with fewer are removed (App. B)
    like_threshold: float = 4.0  # ratings >= this are positive feedback
    dislike_threshold: float = 2.0  # ratings <= this are negative feedback
    might_like_fraction: float = 0.1  # the last 10% of likes become MIGHT_LIKES


def core_filter(ratings: list[Rating], min_interactions: int) -> list[Rating]:
    """Drop users and items with fewer than ``min_interactions`` ratings, repeated until stable.

    Removing an item can push a user under the limit (and the other way round), so one pass is
    not enough for the guarantee the paper states.
    """
    while True:
        users = Counter(r.user_id for r in ratings)
        items = Counter(r.item_id for r in ratings)
        kept = [
            r
            for r in ratings
            if users[r.user_id] >= min_interactions and items[r.item_id] >= min_interactions
        ]
        if len(kept) == len(ratings):
            return kept
        ratings = kept


def build_profiles(
    ratings: Iterable[Rating], config: PreprocessConfig = PreprocessConfig()
) -> dict[str, UserProfile]:
    """Per-user LIKES / DISLIKES (chronological) and MIGHT_LIKES (the last 10% of likes, at least one).

    Users left with no like have no golden recommendation and are dropped.
    """
    kept = core_filter(list(ratings), config.min_interactions)
    per_user: dict[str, list[Rating]] = {}
    for r in kept:
        per_user.setdefault(r.user_id, []).append(r)
    profiles: dict[str, UserProfile] = {}
    for user_id in sorted(per_user, key=_natural):
        # Ties in time go by item id, numerically for digit ids, so the order never depends on input order.
        rows = sorted(per_user[user_id], key=lambda r: (r.time, _natural(r.item_id)))
        likes = [r.item_id for r in rows if r.rating >= config.like_threshold]
        dislikes = [r.item_id for r in rows if r.rating <= config.dislike_threshold]
        if not likes:
            continue
        n_might = max(1, int(len(likes) * config.might_like_fraction))
        profiles[user_id] = UserProfile(
            user_id=user_id,
            likes=likes[:-n_might],
            dislikes=dislikes,
            might_likes=likes[-n_might:],
            ratings={r.item_id: (r.rating, r.time) for r in rows},
        )
    return profiles


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def ratings_from_dataset(dataset: Dataset) -> list[Rating]:
    """The ratings behind a dataset's user histories (MovieLens-100K's 100,000)."""
    if not dataset.histories:
        raise ValueError(
            f"dataset {dataset.name!r} has no user ratings to generate dialogues from; "
            "use movielens-100k or pass --ratings FILE.csv"
        )
    return [
        Rating(user_id=h.user_id, item_id=i.item_id, rating=i.rating, time=i.time)
        for h in dataset.histories.values()
        for i in h.interactions
    ]


def read_ratings_csv(path: Path, catalog: Catalog) -> list[Rating]:
    """Ratings from a CSV with columns user_id, item_id, rating and (optional) timestamp."""
    ratings: list[Rating] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "item_id", "rating"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(path, 1, f"header lacks column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if row["item_id"] not in catalog:
                raise DataFormatError(
                    path, line, f"item_id {row['item_id']!r} is not in the catalog"
                )
            try:
                rating, time = float(row["rating"]), float(row.get("timestamp") or 0)
            except ValueError:
                raise DataFormatError(path, line, "rating and timestamp must be numbers") from None
            ratings.append(Rating(row["user_id"], row["item_id"], rating, time))
    return ratings


def read_items_csv(path: Path) -> Catalog:
    """A catalog from a CSV with columns id, title and (optional) year, genres ("|"-separated), description."""
    items: list[Item] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "title"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(path, 1, f"header lacks column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            year = (row.get("year") or "").strip()
            if year and not year.isdigit():
                raise DataFormatError(path, line, f"year {year!r} is not a number")
            items.append(
                Item(
                    id=row["id"],
                    title=row["title"],
                    year=int(year) if year else None,
                    genres=tuple(g for g in (row.get("genres") or "").split("|") if g),
                    description=row.get("description") or "",
                )
            )
    return Catalog(items, name=path.stem)


def review_text(item: Item) -> str:
    """What fills a review slot: the item's own description, or a sentence made of its metadata.

    MovieLens ships no reviews or plots; title, year and genres are what the dialogue can draw on.
    """
    if item.description:
        return item.description
    genres = ", ".join(g.lower() for g in item.genres) or "film"
    when = f" from {item.year}" if item.year else ""
    people = "; ".join(f"{role}: {', '.join(names)}" for role, names in item.people.items())
    return f"{item.title} is a {genres} movie{when}." + (f" {people}." if people else "")
