"""ReDial loader: the official test split, the CFCRS 1,000-dialogue train subset and item metadata.

Reads ``movies_with_mentions.csv`` (the catalog), ``id2info.json`` (plot, genres, people),
``test_data.jsonl`` (official message format) and ``train_subset_1000_cfcrs.jsonl`` (CFCRS
format), and turns every conversation into a :class:`Dialogue` of merged, role-tagged turns whose
``@<movieId>`` mentions are replaced by the movie's title and recorded in ``Turn.items``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from backend.catalog import Catalog, split_year
from backend.data.base import DataFormatError, Dataset, read_json
from backend.types import Dialogue, Item, Turn

log = logging.getLogger(__name__)

MOVIES_FILE = "movies_with_mentions.csv"
MOVIES_HEADER = ["movieId", "movieName", "nbMentions"]
INFO_FILE = "id2info.json"
TEST_FILE = "test_data.jsonl"
TRAIN_FILE = "train_subset_1000_cfcrs.jsonl"
DEV_FRACTION = 0.1
DEV_SEED = 42

_MENTION_RE = re.compile(r"@(\d+)")
_DIALOGUE_KEYS = ("conversationId", "initiatorWorkerId", "respondentWorkerId", "messages")


def clean_title(raw: str) -> tuple[str, int | None]:
    """'Why Him%3F  (2016)' -> ('Why Him?', 2016): URL-decoded, whitespace collapsed, year split."""
    # ReDial's crawler URL-encoded '?' and '"' (%3F, %22) in some titles.
    title = re.sub(r"\s+", " ", unquote(raw)).strip()
    return split_year(title)


def _read_movies(path: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != MOVIES_HEADER:
            raise DataFormatError(
                path, 1, f"expected the header {','.join(MOVIES_HEADER)}, got {header}"
            )
        for row in reader:
            line = reader.line_num
            if len(row) != len(MOVIES_HEADER):
                raise DataFormatError(path, line, f"expected 3 columns, got {len(row)}")
            movie_id, name, mentions = row[0].strip(), row[1], row[2].strip()
            if not movie_id.isdigit():
                raise DataFormatError(path, line, f"movieId {movie_id!r} is not an integer")
            if not mentions.isdigit():
                raise DataFormatError(path, line, f"nbMentions {mentions!r} is not an integer")
            if movie_id in items:
                raise DataFormatError(path, line, f"duplicate movieId {movie_id}")
            title, year = clean_title(name)
            items[movie_id] = Item(
                id=movie_id, title=title, year=year, extra={"mentions": int(mentions)}
            )
    return items


def _str_list(value: Any, path: Path, movie_id: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(path, None, f"movie {movie_id}: '{key}' must be a list of strings")
    return tuple(value)


def _enrich(items: dict[str, Item], path: Path) -> int:
    """Add id2info.json metadata to ``items`` (adding movies the csv lacks); returns entries read."""
    info = read_json(path)
    if not isinstance(info, dict):
        raise DataFormatError(path, 1, "expected an object {movieId: {...}}")
    for movie_id, meta in info.items():
        if not isinstance(meta, dict):
            raise DataFormatError(path, None, f"movie {movie_id}: expected an object")
        base = items.get(movie_id)
        if base is None:
            if not isinstance(meta.get("name"), str):
                raise DataFormatError(path, None, f"movie {movie_id}: missing 'name'")
            title, year = clean_title(meta["name"])
            base = Item(id=movie_id, title=title, year=year)
        people = {
            role: _str_list(meta.get(role, []), path, movie_id, role)
            for role in ("director", "star", "writer")
        }
        plot = meta.get("plot") or ""
        if not isinstance(plot, str):
            raise DataFormatError(path, None, f"movie {movie_id}: 'plot' must be a string")
        extra = dict(base.extra)
        if meta.get("imdb_id"):
            extra["imdb_id"] = meta["imdb_id"]
        items[movie_id] = base.model_copy(
            update={
                "genres": _str_list(meta.get("genre", []), path, movie_id, "genre"),
                "description": plot,
                "people": {role: names for role, names in people.items() if names},
                "extra": extra,
            }
        )
    return len(info)


class _Resolver:
    """Replaces ``@<movieId>`` by display titles, adding dialogue-only movies to the catalog."""

    def __init__(self, items: dict[str, Item]):
        self.items = items
        self.added = 0
        self.unresolved = Counter[str]()

    def __call__(self, text: str, mentions: dict[str, Any], found: list[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            movie_id = match.group(1)
            item = self.items.get(movie_id)
            if item is None and isinstance(mentions.get(movie_id), str):
                title, year = clean_title(mentions[movie_id])
                item = self.items[movie_id] = Item(id=movie_id, title=title, year=year)
                self.added += 1
            if item is None:
                self.unresolved[movie_id] += 1
                return match.group(0)
            found.append(movie_id)
            return item.display_title

        return _MENTION_RE.sub(replace, text)


def _questions(value: Any, path: Path, line: int, key: str) -> dict[str, Any]:
    # Conversations without answers store an empty list instead of an empty object.
    if value in (None, []):
        return {}
    if not isinstance(value, dict):
        raise DataFormatError(path, line, f"'{key}' must be an object of movieId -> answers")
    return value


def _parse_dialogue(record: Any, path: Path, line: int, resolve: _Resolver) -> Dialogue:
    if not isinstance(record, dict):
        raise DataFormatError(path, line, "expected one JSON object per line")
    missing = [k for k in _DIALOGUE_KEYS if k not in record]
    if missing:
        raise DataFormatError(path, line, f"dialogue is missing {', '.join(map(repr, missing))}")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DataFormatError(path, line, "'messages' must be a list")
    mentions = record.get("movieMentions") or {}
    if not isinstance(mentions, dict):
        raise DataFormatError(path, line, "'movieMentions' must be an object")
    roles = {record["initiatorWorkerId"]: "user", record["respondentWorkerId"]: "system"}
    # CFCRS messages carry turn_id/entity annotations; official ones timeOffset/messageId.
    fmt = (
        "cfcrs"
        if messages and isinstance(messages[0], dict) and "turn_id" in messages[0]
        else "official"
    )

    turns: list[Turn] = []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DataFormatError(path, line, f"message {n} is not an object")
        for key in ("senderWorkerId", "text"):
            if key not in message:
                raise DataFormatError(path, line, f"message {n} has no {key!r}")
        if not isinstance(message["text"], str):
            raise DataFormatError(path, line, f"message {n}: 'text' must be a string")
        role = roles.get(message["senderWorkerId"])
        if role is None:
            raise DataFormatError(
                path,
                line,
                f"message {n}: sender {message['senderWorkerId']!r} is neither the initiator nor the respondent",
            )
        found: list[str] = []
        text = resolve(message["text"].strip(), mentions, found)
        if not text:
            continue
        # PECRS/CRSLab merge consecutive messages of one speaker into a single utterance.
        if turns and turns[-1].role == role:
            last = turns[-1]
            last.text = f"{last.text} {text}"
            last.items.extend(i for i in found if i not in last.items)
        else:
            turns.append(Turn(role=role, text=text, items=list(dict.fromkeys(found))))

    conversation_id = str(record["conversationId"])
    return Dialogue(
        id=conversation_id,
        turns=turns,
        user_id=str(record["initiatorWorkerId"]),
        meta={
            "conversationId": conversation_id,
            "format": fmt,
            "initiatorWorkerId": record["initiatorWorkerId"],
            "respondentWorkerId": record["respondentWorkerId"],
            "initiatorQuestions": _questions(
                record.get("initiatorQuestions"), path, line, "initiatorQuestions"
            ),
            "respondentQuestions": _questions(
                record.get("respondentQuestions"), path, line, "respondentQuestions"
            ),
        },
    )


def _read_dialogues(path: Path, resolve: _Resolver) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    path, line_no, f"invalid JSON: {err.msg} (column {err.colno})"
                ) from None
            dialogues.append(_parse_dialogue(record, path, line_no, resolve))
    log.info(
        "read %s: %d dialogues, %d turns",
        path,
        len(dialogues),
        sum(len(d.turns) for d in dialogues),
    )
    return dialogues


def _conversation_key(dialogue: Dialogue) -> tuple[int, int, str]:
    # Numeric ids sort numerically so the split does not depend on string order.
    return (0, int(dialogue.id), "") if dialogue.id.isdigit() else (1, 0, dialogue.id)


def split_dev(
    dialogues: list[Dialogue], fraction: float = DEV_FRACTION, seed: int = DEV_SEED
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Deterministic (train, dev): ``fraction`` of the dialogues, sorted by id, drawn with ``random.Random(seed)``."""
    ordered = sorted(dialogues, key=_conversation_key)
    picked = set(random.Random(seed).sample(range(len(ordered)), round(len(ordered) * fraction)))
    train = [d for i, d in enumerate(ordered) if i not in picked]
    dev = [d for i, d in enumerate(ordered) if i in picked]
    return train, dev


def load_redial(data_dir: Path) -> Dataset:
    """Load ReDial from ``data_dir`` (the shared ``redial`` folder).

    Splits: ``test`` (official test_data.jsonl), ``train``/``dev`` (the CFCRS train subset split
    90/10 by :func:`split_dev`). Item ids are ReDial movieId strings. Malformed files raise
    :class:`DataFormatError` naming the file and line.
    """
    data_dir = Path(data_dir)
    movies_path = data_dir / MOVIES_FILE
    items = _read_movies(movies_path)
    n_csv = len(items)
    info_path = data_dir / INFO_FILE
    n_info = _enrich(items, info_path)
    log.info(
        "read %s: %d movies; %s: %d entries (%d movies not in the csv)",
        movies_path,
        n_csv,
        info_path,
        n_info,
        len(items) - n_csv,
    )

    resolve = _Resolver(items)
    test_path, train_path = data_dir / TEST_FILE, data_dir / TRAIN_FILE
    test = _read_dialogues(test_path, resolve)
    train, dev = split_dev(_read_dialogues(train_path, resolve))
    if resolve.added:
        log.info("added %d movies known only from dialogue movieMentions", resolve.added)
    if resolve.unresolved:
        log.warning(
            "%d @mentions of %d unknown movie ids kept as raw text (e.g. %s)",
            sum(resolve.unresolved.values()),
            len(resolve.unresolved),
            ", ".join(list(resolve.unresolved)[:5]),
        )

    catalog = Catalog(items.values(), name="redial")
    log.info(
        "redial: %d items, splits train=%d dev=%d test=%d",
        len(catalog),
        len(train),
        len(dev),
        len(test),
    )
    return Dataset(
        name="redial",
        catalog=catalog,
        splits={"train": train, "dev": dev, "test": test},
        files=[str(p) for p in (movies_path, info_path, test_path, train_path)],
    )
