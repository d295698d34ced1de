"""A run's journal: its settings, then one JSON line per finished unit of work.

Evaluations and simulations append each turn or episode as it ends; started again with the same
settings, a run takes up the records already there and continues after them, and with other
settings it starts over. A line torn by a stop is dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    """One run's records in ``path`` (JSONL), after a header line of its ``settings``."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file

    def load(self, matches: Callable[[int, dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The records of this same run, in order, as long as ``matches(index, record)`` says
        the record is the run's unit of work at that index; the file is rewritten with them."""
        found: list[dict[str, Any]] = []
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            if lines and json.loads(lines[0]) == {"settings": self.settings}:
                for index, line in enumerate(lines[1:]):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # cut short by the stop
                        break
                    if not matches(index, record):
                        break
                    found.append(record)
            else:
                log.warning("%s was written by another run; starting over", self.path)
        if found:
            log.info("resuming after %d records from %s", len(found), self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w") as f:  # rewritten whole: a torn last line goes
            f.write(json.dumps({"settings": self.settings}) + "\n")
            f.writelines(json.dumps(r) + "\n" for r in found)
        return found

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def close(self) -> None:
        """The run is complete and its result is the record now: the journal goes."""
        self.path.unlink(missing_ok=True)
