"""INSPIRED loaders: PECRS-processed train/dev/test, or the raw dev/test TSVs with strategy labels.

``source="pecrs"`` reads ``pecrs_processed/{train,dev,test}.json``, whose movies are ``[MOVIE_ID]``
placeholders plus row ids of INSPIRED's movie database -- which is not available. Titles are
recovered by aligning the PECRS dev/test dialogues with the raw TSVs (same dialogues, same order)
and reading, turn by turn, which title stood where PECRS put each ``[MOVIE_ID]``.

``source="raw"`` reads ``raw/dialog_data/{dev,test}.tsv`` directly; items are keyed by a slug of
the title and year (``"joker-2019"``), because the raw files carry no movie ids.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import fuzz

from backend.catalog import Catalog, normalize_title, split_year
from backend.data.base import DataFormatError, Dataset, read_json
from backend.types import Dialogue, Item, Role, Turn

log = logging.getLogger(__name__)

PECRS_SPLITS = ("train", "dev", "test")
RAW_SPLITS = ("dev", "test")
RAW_COLUMNS = (
    "dialog_id", "speaker", "text", "text_with_placeholder", "movies", "movie_dict",
    "expert_label", "second_label", "fine_label", "coarse_label", "movie_id",
)  # fmt: skip
ROLES: dict[str, Role] = {"RECOMMENDER": "system", "SEEKER": "user"}
PECRS_PREFIXES: dict[str, Role] = {"A: ": "system", "B: ": "user"}
MOVIE_ID = "[MOVIE_ID]"
# A PECRS dialogue is the raw one when this share of its comparable turns match at this ratio (0-100).
ALIGN_MIN_RATIO = 80.0
ALIGN_MIN_SHARE = 0.8

_PLACEHOLDER_RE = re.compile(r"\[MOVIE_TITLE_(\d+)\]")
# Repairs dict literals with a lost closing quote, e.g. "{'A (2019)': 0, 'B (1999): 1}" in dev.tsv.
_DICT_ENTRY_RE = re.compile(r"""['"](.*?)['"]?\s*:\s*(\d+)\s*[,}]""")


def _unquote(text: str) -> str:
    # The TSVs spell every double quote as the literal token QUOTATION_MARK.
    return text.replace("QUOTATION_MARK", '"')


def _title_year(raw: str) -> tuple[str, int | None]:
    # A few titles carry an empty year, "Office ()".
    return split_year(re.sub(r"\s*\(\)\s*$", "", raw.strip()))


def raw_item_id(title: str) -> str:
    """Stable id for a raw INSPIRED title: 'The Irishman (2019)' -> 'the-irishman-2019'.

    Titles that normalise to nothing (non-Latin scripts) get a short SHA-1 of the title instead.
    """
    name, year = _title_year(title)
    slug = normalize_title(name).replace(" ", "-")
    if not slug:
        slug = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{slug}-{year}" if year else slug


@dataclass
class _RawTurn:
    """Consecutive rows of one speaker in a raw TSV."""

    speaker: str
    texts: list[str] = field(default_factory=list)
    placeholder_texts: list[str] = field(default_factory=list)
    movies: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(t for t in self.texts if t)


@dataclass
class _RawDialogue:
    dialog_id: str
    turns: list[_RawTurn]
    # movie_dict: placeholder index -> title, shared by every row of the dialogue.
    titles: dict[int, str]
    meta: dict[str, str]


def _parse_movie_dict(value: str, path: Path, line: int) -> dict[int, str]:
    if not value.strip():
        return {}
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = {m.group(1): int(m.group(2)) for m in _DICT_ENTRY_RE.finditer(value)}
        if not parsed:
            raise DataFormatError(
                path, line, f"movie_dict is not a Python dict literal: {value[:80]!r}"
            ) from None
        log.warning("%s:%d: repaired malformed movie_dict %r", path, line, value[:80])
    if not isinstance(parsed, dict) or not all(isinstance(v, int) for v in parsed.values()):
        raise DataFormatError(path, line, f"movie_dict must map titles to integers: {value[:80]!r}")
    return {index: str(title) for title, index in parsed.items()}


def _read_raw(path: Path) -> list[_RawDialogue]:
    """Dialogues of one raw TSV, in order of first appearance, rows merged per speaker."""
    dialogues: dict[str, _RawDialogue] = {}
    n_rows = 0
    with path.open(encoding="utf-8", newline="") as f:
        # Quotes are plain characters in these files, never CSV quoting.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        missing = [c for c in RAW_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(path, 1, f"header lacks column(s) {', '.join(missing)}")
        for fields in reader:
            line = reader.line_num
            if not any(fields):
                continue
            if len(fields) != len(header):
                raise DataFormatError(
                    path, line, f"expected {len(header)} tab-separated columns, got {len(fields)}"
                )
            row = dict(zip(header, fields, strict=True))
            if row["speaker"] not in ROLES:
                raise DataFormatError(
                    path, line, f"speaker must be RECOMMENDER or SEEKER, got {row['speaker']!r}"
                )
            n_rows += 1
            dialogue = dialogues.get(row["dialog_id"])
            if dialogue is None:
                dialogue = dialogues[row["dialog_id"]] = _RawDialogue(
                    dialog_id=row["dialog_id"],
                    turns=[],
                    titles=_parse_movie_dict(row["movie_dict"], path, line),
                    meta={},
                )
            # Dialogue-level outcome columns; one row of dev.tsv has "nan" there.
            for key, column in (
                ("case", "fine_label"),
                ("coarse_label", "coarse_label"),
                ("trailer_id", "movie_id"),
            ):
                if row[column] not in ("", "nan"):
                    dialogue.meta.setdefault(key, row[column])
            if not dialogue.turns or dialogue.turns[-1].speaker != row["speaker"]:
                dialogue.turns.append(_RawTurn(speaker=row["speaker"]))
            turn = dialogue.turns[-1]
            turn.texts.append(_unquote(row["text"]).strip())
            turn.placeholder_texts.append(row["text_with_placeholder"])
            turn.movies.extend(t.strip() for t in row["movies"].split(";") if t.strip())
            turn.labels.extend(
                row[c]
                for c in ("expert_label", "second_label")
                if row[c] and row[c] not in turn.labels
            )
    log.info("read %s: %d rows, %d dialogues", path, n_rows, len(dialogues))
    return list(dialogues.values())


def _raw_dir(data_dir: Path) -> Path:
    return data_dir / "raw" / "dialog_data"


def _load_raw(data_dir: Path) -> Dataset:
    items: dict[str, Item] = {}

    def item_for(title: str) -> str:
        item_id = raw_item_id(title)
        if item_id not in items:
            name, year = _title_year(title)
            items[item_id] = Item(id=item_id, title=name, year=year)
        return item_id

    splits: dict[str, list[Dialogue]] = {}
    files: list[str] = []
    for split in RAW_SPLITS:
        path = _raw_dir(data_dir) / f"{split}.tsv"
        files.append(str(path))
        dialogues = []
        for raw in _read_raw(path):
            for title in raw.titles.values():
                if title.strip():
                    item_for(title)
            turns = [
                Turn(
                    role=ROLES[t.speaker],
                    text=t.text,
                    items=list(dict.fromkeys(item_for(title) for title in t.movies)),
                )
                for t in raw.turns
            ]
            meta = {"dialog_id": raw.dialog_id, "labels": [t.labels for t in raw.turns], **raw.meta}
            dialogues.append(Dialogue(id=raw.dialog_id, turns=turns, meta=meta))
        splits[split] = dialogues
    catalog = Catalog(items.values(), name="inspired-raw")
    log.info(
        "inspired-raw: %d items, splits %s", len(catalog), {k: len(v) for k, v in splits.items()}
    )
    return Dataset(name="inspired-raw", catalog=catalog, splits=splits, files=files)


@dataclass
class _PecrsUtterance:
    role: Role
    text: str
    movie_ids: list[int]


def _read_pecrs(path: Path) -> list[list[_PecrsUtterance]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(path, 1, "expected a JSON list of dialogues")
    dialogues: list[list[_PecrsUtterance]] = []
    for d, record in enumerate(data):
        if not isinstance(record, dict) or not isinstance(record.get("dialogue"), list):
            raise DataFormatError(
                path, None, f"dialogue {d}: expected an object with a 'dialogue' list"
            )
        utterances = []
        for u, entry in enumerate(record["dialogue"]):
            where = f"dialogue {d}, utterance {u}"
            if not isinstance(entry, dict) or not isinstance(entry.get("utterance"), str):
                raise DataFormatError(
                    path, None, f"{where}: expected an object with an 'utterance' string"
                )
            text = entry["utterance"]
            role = PECRS_PREFIXES.get(text[:3])
            if role is None:
                raise DataFormatError(
                    path, None, f"{where}: utterance must start with 'A: ' or 'B: ': {text[:40]!r}"
                )
            ids = entry.get("movie_ids") or []
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise DataFormatError(
                    path, None, f"{where}: movie_ids must be a list of integers or null"
                )
            if text.count(MOVIE_ID) != len(ids):
                raise DataFormatError(
                    path,
                    None,
                    f"{where}: {text.count(MOVIE_ID)} {MOVIE_ID} placeholders but {len(ids)} movie ids",
                )
            utterances.append(
                _PecrsUtterance(role=role, text=_unquote(text[3:]).strip(), movie_ids=ids)
            )
        dialogues.append(utterances)
    log.info("read %s: %d dialogues, %d utterances", path, len(dialogues), sum(map(len, dialogues)))
    return dialogues


def _aligned(pecrs: list[_PecrsUtterance], raw: _RawDialogue) -> bool:
    """Whether a PECRS dialogue is the raw one: same speakers turn by turn, and nearly all turns
    without a ``[MOVIE_ID]`` (whose text PECRS kept) read the same."""
    if len(pecrs) != len(raw.turns):
        return False
    if any(p.role != ROLES[r.speaker] for p, r in zip(pecrs, raw.turns, strict=True)):
        return False
    scores = [
        fuzz.ratio(p.text, r.text) for p, r in zip(pecrs, raw.turns, strict=True) if not p.movie_ids
    ]
    matched = sum(score >= ALIGN_MIN_RATIO for score in scores)
    return bool(scores) and matched >= ALIGN_MIN_SHARE * len(scores)


def _vote_titles(
    pecrs: list[_PecrsUtterance], raw: _RawDialogue, votes: dict[int, Counter[str]]
) -> None:
    """Record, for each ``[MOVIE_ID]`` of an aligned dialogue, the raw title at that position."""
    for utterance, turn in zip(pecrs, raw.turns, strict=True):
        if not utterance.movie_ids:
            continue
        placeholders = _PLACEHOLDER_RE.findall(" ".join(turn.placeholder_texts))
        titles = [raw.titles.get(int(i), "") for i in placeholders]
        # PECRS wrote titles missing from its movie DB back as text; the others became [MOVIE_ID].
        as_ids = [t for t in titles if not t or t not in utterance.text]
        if len(as_ids) != len(utterance.movie_ids):
            continue
        for movie_id, title in zip(utterance.movie_ids, as_ids, strict=True):
            if title:
                votes[movie_id][title] += 1


def _recover_titles(
    data_dir: Path, pecrs: dict[str, list[list[_PecrsUtterance]]]
) -> tuple[dict[int, str], dict[tuple[str, int], str], list[str]]:
    """Movie id -> title from the raw dev/test TSVs, the aligned (split, index) -> dialog_id, files read."""
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    aligned: dict[tuple[str, int], str] = {}
    files: list[str] = []
    for split in RAW_SPLITS:
        path = _raw_dir(data_dir) / f"{split}.tsv"
        if not path.exists():
            log.warning("%s is missing: INSPIRED %s titles cannot be recovered", path, split)
            continue
        files.append(str(path))
        raw = _read_raw(path)
        for index, (p, r) in enumerate(zip(pecrs[split], raw, strict=False)):
            if _aligned(p, r):
                aligned[(split, index)] = r.dialog_id
                _vote_titles(p, r, votes)
        log.info(
            "aligned %d of %d PECRS %s dialogues with %s",
            sum(s == split for s, _ in aligned),
            len(pecrs[split]),
            split,
            path,
        )
    titles: dict[int, str] = {}
    for movie_id, counter in votes.items():
        title, count = counter.most_common(1)[0]
        # A strict majority is required: a few ids collect unrelated titles (PECRS matching noise).
        if count * 2 > counter.total():
            titles[movie_id] = title
        else:
            log.info(
                "INSPIRED movie %d: conflicting titles %s, left unknown", movie_id, dict(counter)
            )
    return titles, aligned, files


def _fill_ids(text: str, ids: list[str], items: dict[str, Item]) -> str:
    """Each ``[MOVIE_ID]`` of ``text`` replaced, in order, by its item's title where it is known."""
    parts = text.split(MOVIE_ID)
    out = [parts[0]]
    for movie_id, part in zip(ids, parts[1:], strict=True):
        item = items[movie_id]
        out.append(item.display_title if item.extra["title_known"] else MOVIE_ID)
        out.append(part)
    return "".join(out)


def _load_pecrs(data_dir: Path) -> Dataset:
    paths = {split: data_dir / "pecrs_processed" / f"{split}.json" for split in PECRS_SPLITS}
    pecrs = {split: _read_pecrs(path) for split, path in paths.items()}
    titles, aligned, raw_files = _recover_titles(data_dir, pecrs)

    all_ids = sorted(
        {i for dialogues in pecrs.values() for d in dialogues for u in d for i in u.movie_ids}
    )
    items: dict[str, Item] = {}
    for movie_id in all_ids:
        if movie_id in titles:
            name, year = _title_year(titles[movie_id])
            items[str(movie_id)] = Item(
                id=str(movie_id), title=name, year=year, extra={"title_known": True}
            )
        else:
            items[str(movie_id)] = Item(
                id=str(movie_id), title=f"INSPIRED movie {movie_id}", extra={"title_known": False}
            )
    log.info("INSPIRED: %d of %d movie ids got titles from the raw TSVs", len(titles), len(all_ids))

    splits: dict[str, list[Dialogue]] = {}
    for split, dialogues in pecrs.items():
        splits[split] = []
        for index, utterances in enumerate(dialogues):
            turns = []
            for u in utterances:
                ids = [str(i) for i in u.movie_ids]
                turns.append(
                    Turn(
                        role=u.role,
                        text=_fill_ids(u.text, ids, items),
                        items=list(dict.fromkeys(ids)),
                    )
                )
            meta = {"raw_dialog_id": aligned[(split, index)]} if (split, index) in aligned else {}
            # PECRS's user_id is the role of the last speaker ("SEEKER"/"RECOMMENDER"), not a user.
            splits[split].append(Dialogue(id=f"{split}-{index}", turns=turns, meta=meta))
    catalog = Catalog(items.values(), name="inspired")
    log.info("inspired: %d items, splits %s", len(catalog), {k: len(v) for k, v in splits.items()})
    return Dataset(
        name="inspired",
        catalog=catalog,
        splits=splits,
        extra={"titles_recovered": len(titles)},
        files=[str(p) for p in paths.values()] + raw_files,
    )


def load_inspired(data_dir: Path, source: str = "pecrs") -> Dataset:
    """Load INSPIRED from ``data_dir`` (the shared ``inspired`` folder).

    ``source="pecrs"`` (dataset "inspired"): train/dev/test from ``pecrs_processed``; item ids are
    INSPIRED movie-DB row ids, titled where the raw dev/test TSVs reveal them, else
    ``"INSPIRED movie <id>"`` with ``extra["title_known"] = False``.
    ``source="raw"`` (dataset "inspired-raw"): dev/test from the raw TSVs, with per-turn strategy
    labels in ``Dialogue.meta["labels"]`` and title-slug item ids (see :func:`raw_item_id`).
    """
    data_dir = Path(data_dir)
    if source == "pecrs":
        return _load_pecrs(data_dir)
    if source == "raw":
        return _load_raw(data_dir)
    raise ValueError(f"unknown INSPIRED source {source!r}; use 'pecrs' or 'raw'")
