"""The dataset container every loader returns, and the error every loader raises."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.catalog import Catalog
from backend.types import Dialogue, UserHistory

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A malformed data file; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def read_json(path: Path) -> Any:
    """Parse a whole JSON file; a syntax error becomes a DataFormatError with its line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, f"invalid JSON: {err.msg}") from None


@dataclass
class Dataset:
    """A catalog, dialogue splits and (where the data has them) user histories."""

    name: str
    catalog: Catalog
    splits: dict[str, list[Dialogue]] = field(default_factory=dict)
    histories: dict[str, UserHistory] = field(default_factory=dict)
    # Extra resources a loader keeps available (e.g. MovieLens's knowledge graph triples).
    extra: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Dialogue]:
        if name not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise KeyError(f"dataset {self.name!r} has no split {name!r} (it has: {have})")
        return self.splits[name]

    def stats(self) -> dict[str, int]:
        """Counts that `crs data info` prints."""
        dialogues = [d for split in self.splits.values() for d in split]
        turns = [t for d in dialogues for t in d.turns]
        users = {d.user_id for d in dialogues if d.user_id} | set(self.histories)
        return {
            "dialogues": len(dialogues),
            "turns": len(turns),
            "system_turns": sum(t.role == "system" for t in turns),
            "turns_with_recommendation": sum(t.role == "system" and bool(t.items) for t in turns),
            "items": len(self.catalog),
            "users": len(users),
            "interactions": sum(len(h.interactions) for h in self.histories.values()),
            **{f"split:{k}": len(v) for k, v in self.splits.items()},
        }
