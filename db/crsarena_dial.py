"""CRSArena-Dial: import the CRS Arena's public dialogues and votes, export ours in its format.

CRSArena-Dial (Bernard, Joko, Balog et al., the data of the CRS Arena demo, WSDM 2025) is
published at https://github.com/iai-group/crsarena-dial (``README.md``, ``data/``,
``tool/merge.py``; also on Hugging Face as iai-group/CRSArena-Dial). Read from that repository,
the format is, per crowdsourcing setting ``S`` ("open", "closed"):

* ``crs_arena_dial_S.json``: a JSON list of dialogues, each
  ``{"conversation ID": "<crs>_<user id>", "agent": {"id": <crs>, "type": "AGENT"},
  "user": {"id": <user id>, "type": "USER"}, "conversation": [{"participant": "USER" | "AGENT",
  "utterance": <text>, "utterance ID": "<crs>-<user id>_<n>"}, ...],
  "metadata": {"sentiment": "satisfied" | "frustrated"}}``;
* ``votes_S.csv`` with columns ``session_id`` (the vote's time, ``YYYY-MM-DD HH:MM:SS[.ffffff]``),
  ``user_id``, ``crs1``, ``crs2``, ``vote`` (the chosen CRS's name, or "tie"), ``feedback``.
  A vote's two dialogues are the ones of ``(crs1, user_id)`` and ``(crs2, user_id)``.

The files hold no Elo field: the dataset's analysis computes Elo ratings from the votes (initial
1000, K = 16); here the votes feed our Bradley–Terry leaderboard instead. What maps to what:

=========================== ==============================================================
CRSArena-Dial               ``ArenaVote``
=========================== ==============================================================
``crs1`` / ``crs2``         ``model_a`` (shown first, so ``left_model``) / ``model_b``
``vote`` = crs1 / crs2 /    ``vote`` = "A" / "B" / "tie"; our "both_bad" is exported as "tie"
"tie"                       (their arena had no such button), so it comes back as a tie
``user_id``                 ``session_id`` (the voter), and ``meta["user_id"]`` of both dialogues
``session_id`` (time)       ``voted_at``, read as UTC (the files give no zone)
dialogue of (crs, user)     ``conversation_a`` / ``_b``: USER -> "user", AGENT -> "system" turns
                            (no item ids: the files have none); ``metadata.sentiment`` ->
                            ``meta["sentiment"]``; the dialogue's id is its conversation ID
``feedback``                ``conversation_a.meta["vote_feedback"]``
(the whole row)             ``mode`` = "blind" (the CRS Arena hid the names),
                            ``source`` = "crsarena-dial", ``round_id`` = "dial-" + a hash of
                            (setting, user_id, crs1, crs2), so a re-import changes nothing
=========================== ==============================================================

An export writes every stored vote (blind ones by default) as one setting; our own votes use the
round id as user id, since the format keys a dialogue by (CRS, user) and a voter of ours may meet
the same model in many rounds. Imported votes keep their user id, so they round-trip exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from backend.types import Dialogue, Turn
from db.arena import AlreadyVoted, list_votes, record_vote
from db.schema import ArenaVote
from db.session import session_scope

log = logging.getLogger(__name__)

SOURCE = "crsarena-dial"
VOTE_COLUMNS = ("session_id", "user_id", "crs1", "crs2", "vote", "feedback")
_ROLES = {"USER": "user", "AGENT": "system"}
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


@dataclass
class ImportReport:
    """What an import did: votes stored, already there, and rows skipped with the reason."""

    imported: int = 0
    already_present: int = 0
    skipped: list[str] = field(default_factory=list)


def settings_in(path: Path) -> list[str]:
    """The settings (``open``, ``closed``, ...) with a votes file in directory ``path``."""
    return sorted(p.stem.removeprefix("votes_") for p in path.glob("votes_*.csv"))


def _dialogue(raw: dict[str, Any]) -> Dialogue:
    turns = []
    for utterance in raw.get("conversation", []):
        role = _ROLES.get(str(utterance.get("participant", "")).upper())
        if role is None:
            raise ValueError(
                f"dialogue {raw.get('conversation ID')!r}: participant "
                f"{utterance.get('participant')!r} is neither USER nor AGENT"
            )
        turns.append(Turn(role=role, text=str(utterance.get("utterance", ""))))
    meta = {"user_id": raw["user"]["id"], **raw.get("metadata", {})}
    return Dialogue(id=raw["conversation ID"], turns=turns, meta=meta)


def _voted_at(text: str) -> datetime:
    for pattern in _TIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"session_id {text!r} is not a time like 2024-09-13 02:57:16")


def _round_id(setting: str, user_id: str, crs1: str, crs2: str) -> str:
    key = json.dumps([setting, user_id, crs1, crs2]).encode("utf-8")
    return "dial-" + hashlib.sha256(key).hexdigest()[:40]


def _side_vote(row: dict[str, str]) -> str | None:
    choice = row["vote"].strip()
    return {row["crs1"]: "A", row["crs2"]: "B", "tie": "tie"}.get(choice)


def _stored_rounds(engine: Engine | None, source: str) -> set[str]:
    with session_scope(engine, write=False) as session:
        return set(session.scalars(select(ArenaVote.round_id).where(ArenaVote.source == source)))


def import_setting(engine: Engine | None, path: Path, setting: str) -> ImportReport:
    """Import ``votes_<setting>.csv`` with the dialogues of ``crs_arena_dial_<setting>.json``."""
    votes_file = path / f"votes_{setting}.csv"
    dialogues_file = path / f"crs_arena_dial_{setting}.json"
    dialogues = {}
    if dialogues_file.exists():
        for raw in json.loads(dialogues_file.read_text(encoding="utf-8")):
            dialogues[(raw["agent"]["id"], raw["user"]["id"])] = _dialogue(raw)
    else:
        log.warning(
            "%s not found: votes of %r are imported without dialogues", dialogues_file, setting
        )
    report = ImportReport()
    with votes_file.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = set(VOTE_COLUMNS) - set(rows[0] if rows else VOTE_COLUMNS)
    if missing:
        raise ValueError(f"{votes_file} lacks the columns {', '.join(sorted(missing))}")
    present = _stored_rounds(engine, SOURCE)
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{votes_file.name} line {number}"
        vote = _side_vote(row)
        if row["crs1"] == row["crs2"]:
            report.skipped.append(f"{where}: crs1 and crs2 are both {row['crs1']!r}")
            continue
        if vote is None:
            report.skipped.append(f"{where}: vote {row['vote']!r} names neither CRS nor 'tie'")
            continue
        user_id = row["user_id"]
        sides = []
        for crs in (row["crs1"], row["crs2"]):
            found = dialogues.get((crs, user_id))
            # A copy: one dialogue may belong to two votes of the same user.
            sides.append(
                found.model_copy(deep=True)
                if found
                else Dialogue(id=f"{crs}_{user_id}", meta={"user_id": user_id})
            )
        sides[0].meta["vote_feedback"] = row.get("feedback") or ""
        try:
            stored = record_vote(
                engine,
                round_id=_round_id(setting, user_id, row["crs1"], row["crs2"]),
                model_a=row["crs1"],
                model_b=row["crs2"],
                left_model=row["crs1"],
                vote=vote,
                conversation_a=sides[0],
                conversation_b=sides[1],
                mode="blind",
                voted_at=_voted_at(row["session_id"]),
                session_id=user_id,
                source=SOURCE,
            )
        except AlreadyVoted as err:
            report.skipped.append(f"{where}: a different vote of this user on this pair ({err})")
            continue
        if stored.round_id in present:
            report.already_present += 1
        else:
            report.imported += 1
            present.add(stored.round_id)
    return report


def import_dial(engine: Engine | None, path: Path) -> dict[str, ImportReport]:
    """Import every setting found in directory ``path``; one report per setting."""
    settings = settings_in(path)
    if not settings:
        raise FileNotFoundError(
            f"no votes_<setting>.csv in {path}; point at the data/ directory of CRSArena-Dial"
        )
    return {setting: import_setting(engine, path, setting) for setting in settings}


def _export_user(vote: ArenaVote) -> str:
    meta_user = (vote.conversation_a.get("meta") or {}).get("user_id")
    return str(meta_user) if vote.source == SOURCE and meta_user else vote.round_id


def _export_dialogue(conversation: dict[str, Any], crs: str, user_id: str, vote: str) -> dict:
    meta = conversation.get("meta") or {}
    sentiment = meta.get("sentiment") or ("frustrated" if vote == "both_bad" else None)
    return {
        "conversation ID": f"{crs}_{user_id}",
        "agent": {"id": crs, "type": "AGENT"},
        "user": {"id": user_id, "type": "USER"},
        "conversation": [
            {
                "participant": "USER" if turn["role"] == "user" else "AGENT",
                "utterance": turn["text"],
                "utterance ID": f"{crs}-{user_id}_{number}",
            }
            for number, turn in enumerate(conversation.get("turns", []))
        ],
        "metadata": {"sentiment": sentiment},
    }


def _vote_row(vote: ArenaVote, user_id: str) -> dict[str, str]:
    left, right = (
        (vote.model_a, vote.model_b)
        if vote.left_model == vote.model_a
        else (vote.model_b, vote.model_a)
    )
    choice = {"A": left, "B": right}.get(vote.vote, "tie")
    return {
        "session_id": vote.voted_at.astimezone(UTC).strftime(_TIME_FORMATS[0]),
        "user_id": user_id,
        "crs1": left,
        "crs2": right,
        "vote": choice,
        "feedback": (vote.conversation_a.get("meta") or {}).get("vote_feedback", ""),
    }


def export_dial(
    engine: Engine | None,
    out: Path,
    setting: str = "arena",
    *,
    blind_only: bool = True,
    sources: Iterable[str] | None = None,
) -> tuple[int, list[str]]:
    """Write ``votes_<setting>.csv`` and ``crs_arena_dial_<setting>.json`` into directory ``out``.

    Returns (votes written, notes on votes left out). A vote between two versions of one model
    is left out: the format names a CRS only, so the two dialogues would share one id.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows, dialogues, notes = [], {}, []
    for vote in list_votes(engine, blind_only=blind_only, sources=sources):
        if vote.model_a == vote.model_b:
            notes.append(f"round {vote.round_id}: both sides are {vote.model_a!r}; left out")
            continue
        user_id = _export_user(vote)
        row = _vote_row(vote, user_id)
        rows.append(row)
        for conversation, crs in (
            (vote.conversation_a, vote.model_a),
            (vote.conversation_b, vote.model_b),
        ):
            dialogue = _export_dialogue(conversation, crs, user_id, vote.vote)
            dialogues.setdefault(dialogue["conversation ID"], dialogue)
    with (out / f"votes_{setting}.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VOTE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"crs_arena_dial_{setting}.json").write_text(
        json.dumps(list(dialogues.values()), indent=4) + "\n", encoding="utf-8"
    )
    return len(rows), notes
