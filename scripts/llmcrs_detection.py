"""LLMCRS's sub-task detection accuracy against the labels we have (issue 16).

    python scripts/llmcrs_detection.py --dataset llm-redial --split test [--set KEY=VALUE ...]
    python scripts/llmcrs_detection.py --dataset inspired-raw --split test
    python scripts/llmcrs_detection.py --dataset redial --split test --limit 200

llm-redial: the generated dialogues' gold per-turn goals; inspired-raw: INSPIRED's strategy
labels mapped to sub-tasks; redial: the silver rules (`backend/models/llmcrs/labels.py`).
Writes the report as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.cli_common import parse_overrides
from backend.data import load_dataset
from backend.models.llmcrs.detection import detection_report
from backend.models.llmcrs.labels import gold_subtask, inspired_subtask, silver_subtask
from backend.registry import create_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="llm-redial", choices=["llm-redial", "inspired-raw", "redial"]
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N labelled turns")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    overrides = parse_overrides(args.overrides)
    model = create_model("llmcrs", dataset, overrides)
    label = {"llm-redial": gold_subtask, "redial": silver_subtask}.get(
        args.dataset, inspired_subtask
    )
    report = detection_report(model, dataset.split(args.split), label, args.limit)
    report = {"dataset": args.dataset, "split": args.split, "model": model.version, **report}
    out = args.out or Path(f"results/llmcrs-detection-{args.dataset}-{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "set": args.overrides}, indent=2) + "\n")
    print(json.dumps(report, indent=2))
