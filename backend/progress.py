"""Training progress a watcher can read: a tqdm bar that also writes its state to a JSON file.

The demo's background trainer sets ``CRS_PROGRESS_FILE`` for the ``crs train`` process it starts
and reads the file to show "training 45 %, about 3 min left"; without the variable the bar is a
plain tqdm bar.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

PROGRESS_ENV = "CRS_PROGRESS_FILE"
WRITE_EVERY_S = 1.0  # often enough for a page that polls every few seconds


class ProgressBar(tqdm):
    """tqdm that mirrors ``{done, total, elapsed_s, eta_s}`` into ``$CRS_PROGRESS_FILE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        target = os.environ.get(PROGRESS_ENV)
        self._target = Path(target) if target else None
        self._written = 0.0
        self._write()

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if time.monotonic() - self._written >= WRITE_EVERY_S or self.n >= (self.total or 0):
            self._write()
        return shown

    def _write(self) -> None:
        if self._target is None:
            return
        elapsed = self.format_dict.get("elapsed", 0.0)
        rate = self.n / elapsed if elapsed > 0 and self.n else 0.0
        total = self.total or 0
        state = {
            "desc": self.desc,
            "done": self.n,
            "total": total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": round((total - self.n) / rate, 1) if rate and total else None,
        }
        # Write then rename, so a reader never sees half a file.
        tmp = self._target.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._target)
        self._written = time.monotonic()


def read_progress(path: Path) -> dict[str, Any] | None:
    """The last state a `ProgressBar` wrote to ``path``, or None before the first write."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
