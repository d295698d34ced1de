"""MovieLens-100K held out for one-turn evaluation (LatentCRS §5.1): the view every model of the
LatentCRS study trains and is scored on, so that no model has seen a test target.

Each user's **test target** is their last liked movie, the very rule of `crs simulate`'s targets,
so one-turn and multi-turn figures ask for the same movies; the **valid target** is the last liked
movie before it; **train** is every other interaction. A split's dialogue is one turn: the user
describes the target without naming it, and the system turn holds the target as gold.

- ``histories`` are the train view (what SASRec and LatentCRS learn from);
- ``extra["context_histories"][split]`` is what a model may read when scored on that split: the
  train view for ``valid``, everything but the test target for ``test``;
- descriptions come from ``descriptions.jsonl.gz`` beside this module (written once by the LLM
  simulator, `scripts/latentcrs_descriptions.py`); a user it lacks gets the simulator's template,
  and ``meta["description"]`` says which.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

from backend.data.base import Dataset
from backend.data.movielens import load_movielens_100k
from backend.types import Dialogue, Interaction, Turn, UserHistory

NAME = "movielens-100k-heldout"
SPLITS = ("valid", "test")


def descriptions_path() -> Path:
    return Path(__file__).resolve().parent / "generated" / NAME / "descriptions.jsonl.gz"


@dataclass(frozen=True)
class HeldOut:
    """One user's targets and the interactions left around them."""

    user_id: str
    train: list[Interaction]
    valid: Interaction
    test: Interaction

    def history(self, split: str, base: UserHistory) -> UserHistory:
        """What a model may read when asked for the ``split`` target (``train``: the train view)."""
        seen = self.train if split in ("train", "valid") else [*self.train, self.valid]
        return base.model_copy(update={"interactions": sorted(seen, key=lambda i: i.time)})


def _last_liked(ordered: list[Interaction], threshold: float) -> Interaction | None:
    return next((i for i in reversed(ordered) if i.rating >= threshold), None)


def hold_out(history: UserHistory) -> HeldOut | None:
    """The user's test and valid targets (last two liked movies), or None with fewer than two
    likes or nothing left to train on."""
    ordered = sorted(history.interactions, key=lambda i: i.time)
    test = _last_liked(ordered, history.like_threshold)
    if test is None:
        return None
    rest = [i for i in ordered if i is not test]
    valid = _last_liked(rest, history.like_threshold)
    if valid is None:
        return None
    train = [i for i in rest if i is not valid]
    return HeldOut(history.user_id, train, valid, test) if train else None


def load_descriptions(path: Path | None = None) -> dict[tuple[str, str], dict]:
    """(user, split) -> the shipped description row ({"text", "fallback", "rewrites", ...})."""
    path = path or descriptions_path()
    if not path.is_file():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["user"], r["split"]): r for r in rows}


def load_movielens_heldout(root: Path | None = None) -> Dataset:
    """MovieLens-100K with each user's last two liked movies held out (see the module doc)."""
    return held_out_view(load_movielens_100k(root), NAME, load_descriptions())


def held_out_view(base: Dataset, name: str, written: dict[tuple[str, str], dict]) -> Dataset:
    """``base`` with each user's last two liked items held out as one-turn valid and test
    dialogues, described by ``written`` rows or else by the simulator's template."""
    # Imported here: the simulator imports the model registry, which imports this package.
    from backend.simulator import Act, template

    histories: dict[str, UserHistory] = {}
    context: dict[str, dict[str, UserHistory]] = {s: {} for s in SPLITS}
    splits: dict[str, list[Dialogue]] = {s: [] for s in SPLITS}
    for user_id in sorted(base.histories, key=lambda u: (len(u), u)):
        held = hold_out(base.histories[user_id])
        if held is None or held.test.item_id not in base.catalog:
            continue
        histories[user_id] = held.history("train", base.histories[user_id])
        for split in SPLITS:
            target = getattr(held, split)
            context[split][user_id] = held.history(split, base.histories[user_id])
            row = written.get((user_id, split))
            if row:
                text, source = row["text"], "template" if row.get("fallback") else "llm"
            else:  # not written yet: the simulator's own template, seeded per user and split
                rng = random.Random(f"{user_id}/{split}")
                text = template(Act.DESCRIBE, base.catalog[target.item_id], rng)
                source = "template"
            splits[split].append(
                Dialogue(
                    id=f"{user_id}/{split}",
                    user_id=user_id,
                    turns=[
                        Turn(role="user", text=text),
                        Turn(role="system", text="", items=[target.item_id]),
                    ],
                    meta={"split": split, "description": source},
                )
            )
    return Dataset(
        name=name,
        catalog=base.catalog,
        splits=splits,
        histories=histories,
        extra={**base.extra, "context_histories": context},
        files=base.files,
    )
