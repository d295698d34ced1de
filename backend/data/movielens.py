"""MovieLens-100K loader: the RecBole atomic files shipped inside the ``recbole`` wheel.

Reads ``ml-100k.item`` (catalog), ``ml-100k.inter`` (ratings -> time-ordered user histories) and
``ml-100k.user`` (demographics) directly as TSV, without importing recbole (and its torch stack).
The knowledge graph (``ml-100k.kg`` triples, ``ml-100k.link`` item -> entity) is parsed on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from backend.catalog import Catalog
from backend.data.base import DataFormatError, Dataset
from backend.types import Interaction, Item, UserHistory

log = logging.getLogger(__name__)

NAME = "movielens-100k"
_ARTICLE_RE = re.compile(r"^(?P<title>.+?), (?P<article>The|A|An)(?P<rest> \(.*\))?$")


def readable_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects'; an alternative title in brackets stays last."""
    m = _ARTICLE_RE.match(title)
    if not m:
        return title
    return f"{m['article']} {m['title']}{m['rest'] or ''}"


def default_root() -> Path:
    """The ``dataset_example/ml-100k`` folder of the installed recbole package (not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100K ships inside the recbole package, which is not installed: "
            "run `pip install --no-deps recbole` (or pass the ml-100k folder explicitly)"
        )
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def read_atomic(
    path: Path, required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str | float]]]:
    """Rows of a RecBole atomic file as ``(line number, {column: value})``.

    The header names columns as ``name:type``; ``float`` columns are converted, tokens stay strings.
    """
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        floats = [n for n, h in zip(names, header, strict=True) if h.endswith(":float")]
        missing = [c for c in required if c not in names]
        if missing:
            raise DataFormatError(path, 1, f"header lacks column(s) {', '.join(missing)}: {header}")
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(names):
                raise DataFormatError(
                    path, line_no, f"expected {len(names)} tab-separated columns, got {len(fields)}"
                )
            row: dict[str, str | float] = dict(zip(names, fields, strict=True))
            for name in floats:
                try:
                    row[name] = float(row[name])
                except ValueError:
                    raise DataFormatError(
                        path, line_no, f"{name} {row[name]!r} is not a number"
                    ) from None
            yield line_no, row


@dataclass
class KnowledgeGraph:
    """RecBole's Freebase knowledge graph for ML-100K, parsed on first access."""

    kg_path: Path
    link_path: Path

    @cached_property
    def triples(self) -> list[tuple[str, str, str]]:
        """``(head entity, relation, tail entity)`` triples."""
        triples = [
            (str(r["head_id"]), str(r["relation_id"]), str(r["tail_id"]))
            for _, r in read_atomic(self.kg_path, ("head_id", "relation_id", "tail_id"))
        ]
        log.info("read %s: %d triples", self.kg_path, len(triples))
        return triples

    @cached_property
    def item_entity(self) -> dict[str, str]:
        """MovieLens item id -> Freebase entity id."""
        links = {
            str(r["item_id"]): str(r["entity_id"])
            for _, r in read_atomic(self.link_path, ("item_id", "entity_id"))
        }
        log.info("read %s: %d item links", self.link_path, len(links))
        return links


def _read_items(path: Path) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for line_no, row in read_atomic(path, ("item_id", "movie_title", "release_year", "class")):
        item_id = str(row["item_id"])
        if item_id in seen:
            raise DataFormatError(path, line_no, f"duplicate item_id {item_id}")
        seen.add(item_id)
        year = str(row["release_year"])
        items.append(
            Item(
                id=item_id,
                title=readable_title(str(row["movie_title"])),
                # Item 267 has the placeholder year "unkonwn".
                year=int(year) if year.isdigit() else None,
                # "unknown" is MovieLens's marker for "no genre".
                genres=tuple(g for g in str(row["class"]).split() if g != "unknown"),
            )
        )
    log.info("read %s: %d items", path, len(items))
    return items


def _read_histories(path: Path, catalog: Catalog) -> dict[str, UserHistory]:
    per_user: dict[str, list[Interaction]] = defaultdict(list)
    for line_no, row in read_atomic(path, ("user_id", "item_id", "rating", "timestamp")):
        item_id = str(row["item_id"])
        if item_id not in catalog:
            raise DataFormatError(path, line_no, f"item_id {item_id} is not in the item file")
        per_user[str(row["user_id"])].append(
            Interaction(item_id=item_id, rating=float(row["rating"]), time=float(row["timestamp"]))
        )
    histories: dict[str, UserHistory] = {}
    for user_id, interactions in per_user.items():
        # Many ratings share a timestamp; ties go by item id, numerically for digit ids ("9" < "10").
        interactions.sort(key=lambda i: (i.time, len(i.item_id), i.item_id))
        histories[user_id] = UserHistory(user_id=user_id, interactions=interactions)
    log.info(
        "read %s: %d interactions of %d users",
        path,
        sum(map(len, per_user.values())),
        len(histories),
    )
    return histories


def load_movielens_100k(root: Path | None = None) -> Dataset:
    """Load MovieLens-100K from ``root`` (default: the copy inside the installed recbole package).

    Returns a dataset with the 1,682-movie catalog, one time-ordered :class:`UserHistory` per user,
    ``extra["users"]`` (user id -> age/gender/occupation/zip_code) and ``extra["kg"]``
    (a lazily parsed :class:`KnowledgeGraph`). It has no dialogue splits.
    """
    root = Path(root) if root is not None else default_root()
    item_path, inter_path, user_path = (
        root / f"ml-100k.{ext}" for ext in ("item", "inter", "user")
    )
    catalog = Catalog(_read_items(item_path), name=NAME)
    histories = _read_histories(inter_path, catalog)
    users = {str(row.pop("user_id")): row for _, row in read_atomic(user_path, ("user_id",))}
    log.info("read %s: %d users", user_path, len(users))
    kg = KnowledgeGraph(kg_path=root / "ml-100k.kg", link_path=root / "ml-100k.link")
    return Dataset(
        name=NAME,
        catalog=catalog,
        histories=histories,
        extra={"kg": kg, "users": users},
        files=[str(p) for p in (item_path, inter_path, user_path, kg.kg_path, kg.link_path)],
    )
