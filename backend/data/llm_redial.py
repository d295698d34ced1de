"""Loader of generated LLM-REDIAL-style dialogues (``crs data generate``'s output folder).

The folder holds ``dialogues.jsonl.gz`` (the project's dialogue format, ``meta.split`` naming the
split), ``users.jsonl.gz`` (each user's LIKES, DISLIKES and MIGHT_LIKES with ratings) and
``items.jsonl.gz`` (the catalog). A user's history is LIKES + DISLIKES only: MIGHT_LIKES are the
golden recommendations and stay out of what a model may see.

The embedded default is a MovieLens-100K set generated with the bundled SmolLM2 and committed
under ``backend/data/generated/movielens-100k`` (its ``stats.json`` says how it was made).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pydantic import ValidationError

from backend.catalog import Catalog
from backend.data.base import DataFormatError, Dataset
from backend.types import Dialogue, Item

NAME = "llm-redial"
SPLITS = ("train", "dev", "test")


def embedded_root() -> Path:
    return Path(__file__).resolve().parent / "generated" / "movielens-100k"


def _rows(path: Path):
    if not path.is_file():
        raise DataFormatError(path, None, "missing; is this a `crs data generate` output folder?")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(path, line_no, f"invalid JSON: {err.msg}") from None


def load_llm_redial(root: Path | None = None) -> Dataset:
    """Load a generated dialogue folder (default: the embedded MovieLens-100K set)."""
    # Imported here: backend.generate imports this package's base module.
    from backend.generate.profiles import UserProfile

    root = Path(root) if root is not None else embedded_root()
    paths = {name: root / f"{name}.jsonl.gz" for name in ("dialogues", "users", "items")}
    try:
        catalog = Catalog((Item.model_validate(row) for _, row in _rows(paths["items"])), name=NAME)
        splits: dict[str, list[Dialogue]] = {name: [] for name in SPLITS}
        for line_no, row in _rows(paths["dialogues"]):
            dialogue = Dialogue.model_validate(row)
            split = dialogue.meta.get("split")
            if split not in splits:
                raise DataFormatError(
                    paths["dialogues"], line_no, f"meta.split is {split!r}, not one of {SPLITS}"
                )
            splits[split].append(dialogue)
        histories = {}
        for _, row in _rows(paths["users"]):
            profile = UserProfile(
                **{**row, "ratings": {k: tuple(v) for k, v in row["ratings"].items()}}
            )
            histories[profile.user_id] = profile.history()
    except (ValidationError, TypeError, KeyError) as err:
        raise DataFormatError(root, None, f"malformed record: {err}") from None
    return Dataset(
        name=NAME,
        catalog=catalog,
        splits=splits,
        histories=histories,
        files=[str(p) for p in paths.values()],
    )
