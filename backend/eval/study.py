"""What the scripts that train and evaluate a model's variants in turn share (the ablation
tables of `scripts/pecrs_ablations.py` and `scripts/llmcrs_redial.py`): running `crs`, the
command line and writing the summary."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def crs(*args: str) -> None:
    """Run this environment's `crs` with ``args``, echoed first; a failure stops the study."""
    command = [str(Path(sys.executable).with_name("crs")), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def study_args(doc: str, limit: int, out: str) -> argparse.Namespace:
    """``--limit`` (first N test dialogues) and ``--out`` (the summary JSON)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--limit", type=int, default=limit, help="first N ReDial test dialogues")
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser.parse_args()


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
