"""Cross-fitting the partner's predictions, so that no collaboration trains on a leak.

CRS→LLM fine-tunes the LLM on inputs that carry the CRS's outputs (and LLM→CRS the reverse). A
partner trained on the whole train split would have seen the very examples it predicts, and its
outputs there would be better than anything it says at test time. So the train split is cut into
K folds **by user** (ReDial users have up to 17 dialogues; LLM-REDIAL's share gold films across a
user's dialogues); the partner trained without fold k predicts fold k; dev and test are predicted
by the partner trained on all of train (which is also the no-collaboration row). Every prediction
row carries where it came from, and `check` refuses a set of rows that leaks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from backend.models.presales.schema import Example

FOLDS = 2


class LeakageError(AssertionError):
    """A partner prediction on a train example came from a model that trained on its user."""


def unit(example: Example) -> str:
    """The leakage unit: a dataset's user (their dialogues all fall in one fold)."""
    return f"{example.dataset}/{example.user_id}"


def fold_of(example: Example, folds: int = FOLDS) -> int:
    """A stable fold for the example's user (the same on every machine and run)."""
    digest = hashlib.sha1(unit(example).encode()).hexdigest()
    return int(digest[:8], 16) % folds


@dataclass
class Partner:
    """One trained partner: ``fold`` None is the full model; otherwise it left fold ``fold`` out."""

    role: str  # "crs" | "llm"
    fold: int | None
    units: frozenset[str]

    @property
    def name(self) -> str:
        return f"{self.role}-full" if self.fold is None else f"{self.role}-fold{self.fold}"

    @property
    def units_hash(self) -> str:
        return hashlib.sha1("\n".join(sorted(self.units)).encode()).hexdigest()[:12]

    def units_json(self) -> str:
        """What a checkpoint writes as ``train_units.json``."""
        return json.dumps({"model": self.name, "units": sorted(self.units)}, indent=1)


def training_examples(
    train: Iterable[Example], fold: int | None, folds: int = FOLDS
) -> list[Example]:
    """The train examples of the partner that leaves ``fold`` out (all of them for None)."""
    return [e for e in train if fold is None or fold_of(e, folds) != fold]


def partners(role: str, train: list[Example], folds: int = FOLDS) -> list[Partner]:
    """The full partner and one per left-out fold, each with the users it trains on."""
    return [
        Partner(role, fold, frozenset(unit(e) for e in training_examples(train, fold, folds)))
        for fold in (None, *range(folds))
    ]


def predictor(example: Example, models: list[Partner], folds: int = FOLDS) -> Partner:
    """Which partner predicts ``example``: its fold's model on train, the full one elsewhere."""
    fold = fold_of(example, folds) if example.split == "train" else None
    return next(m for m in models if m.fold == fold)


def provenance(example: Example, model: Partner, output: Any, folds: int = FOLDS) -> dict[str, Any]:
    """A prediction row: the partner's ``output`` and where it came from."""
    return {
        "example_id": example.example_id,
        "split": example.split,
        "dialogue_id": example.dialogue_id,
        "user": unit(example),
        "fold": fold_of(example, folds),
        "model": model.name,
        "units_hash": model.units_hash,
        "output": output,
    }


def check(rows: list[dict[str, Any]], examples: list[Example], models: list[Partner]) -> None:
    """Refuse partner predictions that leak: a train row predicted by a model that trained on its
    user, a train example predicted other than once, a dev/test row not from the full model, or
    a row whose model's units changed since (its hash)."""
    by_name = {m.name: m for m in models}
    seen = Counter(r["example_id"] for r in rows)
    for example in examples:
        if example.split == "train" and seen[example.example_id] != 1:
            raise LeakageError(
                f"{example.example_id}: predicted {seen[example.example_id]} times (want once)"
            )
    for row in rows:
        model = by_name.get(row["model"])
        if model is None or model.units_hash != row["units_hash"]:
            raise LeakageError(f"{row['example_id']}: from {row['model']}, not a known partner run")
        if row["split"] == "train" and row["user"] in model.units:
            raise LeakageError(
                f"{row['example_id']}: {model.name} trained on user {row['user']} it predicts"
            )
        if row["split"] != "train" and model.fold is not None:
            raise LeakageError(f"{row['example_id']}: {row['split']} rows come from the full model")
