"""Loader of U-NEED (Liu et al., SIGIR 2023), the pre-sales dialogues of the LLM ⇄ CRS paper.

Only its format samples are public (``CRS_DATA_DIR/u_need_samples``: one dialogue per split, a
few items and user actions); the full set is given on request and drops into the same folder.
Each ``{train,valid,test}_dialogue.json`` is a list of dialogues whose turns carry the
annotations the four pre-sales tasks read: the act, the (attribute, value) frames with their
character spans, the recommended items and the 20 candidates they were chosen from. A turn's
annotations are hidden state (``Dialogue.meta["turns"]``, never shown to a model); ``valid`` is
the project's ``dev`` split.

`understand_samples` rebuilds the paper's Understand task samples from a dialogue, in the layout
of the dataset's own ``crs_task_samples`` (each earlier turn, then its needs line, then the
current turn; the label is the current turn's frames).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from backend.catalog import Catalog
from backend.data.base import DataFormatError, Dataset, read_json
from backend.types import Dialogue, Item, Turn

NAME = "u-need"
SPLITS = {"train": "train", "valid": "dev", "test": "test"}
USER, STAFF = "用户", "客服"  # sender_type values


def frames(attributes: list[dict[str, Any]]) -> str:
    """A turn's frames as U-NEED writes labels: ``attr：value；attr：value`` (full-width marks; a
    staff question's attribute may have no value: ``年龄：``)."""
    return "；".join(f"{a['key']}：{a['value']}" for a in attributes)


def parse_frames(text: str) -> list[tuple[str, str]]:
    """``attr：value；…`` back to (attribute, value) pairs; ASCII ``:`` and ``;`` are read too."""
    pairs = []
    for part in text.replace(";", "；").split("；"):
        key, sep, value = part.replace(":", "：").partition("：")
        if key.strip() and sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def _turn(raw: dict[str, Any], path: Path, where: str) -> tuple[Turn, dict[str, Any]]:
    try:
        sender, text = raw["sender_type"], raw["send_content"]
        notes = {
            "act": raw["act_tag"],
            "attributes": [
                {"key": a["key"], "value": a["value"]} for a in raw.get("attributes") or []
            ],
            "candidates": [str(i) for c in raw.get("rec_item_candidates") or [] for i in c],
        }
        items = [str(i) for i in raw.get("rec_item_id") or []]
    except (KeyError, TypeError) as err:
        raise DataFormatError(path, None, f"{where}: missing field {err}") from None
    if sender not in (USER, STAFF):
        raise DataFormatError(
            path, None, f"{where}: sender_type {sender!r} is neither 用户 nor 客服"
        )
    return Turn(role="user" if sender == USER else "system", text=text, items=items), notes


def _dialogues(path: Path, split: str) -> list[Dialogue]:
    records = read_json(path)
    if not isinstance(records, list):
        raise DataFormatError(path, None, "expected a JSON list of dialogues")
    out = []
    for n, record in enumerate(records):
        turns, notes = zip(
            *(_turn(t, path, f"dialogue {n}, turn {k}") for k, t in enumerate(record["dialogue"])),
            strict=True,
        )
        out.append(
            Dialogue(
                id=str(record["sid"]),
                turns=list(turns),
                user_id=str(record["userid"]),
                meta={
                    "source": NAME,
                    "split": split,
                    "domain": record["domain"],
                    "seller_id": str(record["sellerid"]),
                    "turns": list(notes),
                },
            )
        )
    return out


def _items(data_dir: Path, dialogues: list[Dialogue]) -> list[Item]:
    """Every item a dialogue recommends or offers as a candidate, with its ``item_kg.txt``
    relations (price range, category …) in ``extra``; U-NEED gives items no names."""
    relations: dict[str, dict[str, str]] = {}
    kg = data_dir / "item_kg.txt"
    if kg.is_file():
        with kg.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                relations.setdefault(row["item_id_encrypt"], {})[row["relation_name"]] = row[
                    "value"
                ]
    ids = dict.fromkeys(relations)
    for d in dialogues:
        for turn, notes in zip(d.turns, d.meta["turns"], strict=True):
            ids.update(dict.fromkeys([*turn.items, *notes["candidates"]]))
    return [Item(id=i, title=f"item {i}", extra=relations.get(i, {})) for i in ids]


def load_u_need(data_dir: Path) -> Dataset:
    """The U-NEED folder (``*_dialogue.json``, ``item_kg.txt``) as a `Dataset`."""
    splits = {}
    for name, split in SPLITS.items():
        path = data_dir / f"{name}_dialogue.json"
        if not path.is_file():
            raise DataFormatError(path, None, "missing; is this the u_need_samples folder?")
        splits[split] = _dialogues(path, split)
    dialogues = [d for split in splits.values() for d in split]
    catalog = Catalog(_items(data_dir, dialogues), name=NAME)
    return Dataset(name=NAME, catalog=catalog, splits=splits)


def understand_samples(dialogue: Dialogue) -> list[dict[str, Any]]:
    """One Understand sample per turn: ``input`` lines (each earlier turn, then ``需求：`` with its
    frames when it has any, then the current turn) and ``label`` (the current turn's frames)."""
    samples, lines = [], []
    for k, (turn, notes) in enumerate(zip(dialogue.turns, dialogue.meta["turns"], strict=True)):
        line = f"{USER if turn.role == 'user' else STAFF}：{turn.text}"
        if notes["attributes"]:
            samples.append(
                {"input": [*lines, line], "label": frames(notes["attributes"]), "turn": k}
            )
        lines.append(line)
        if notes["attributes"]:
            lines.append(f"需求：{frames(notes['attributes'])}")
    return samples
