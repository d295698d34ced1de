"""Peak memory and speed of the pre-sales LLM's training step, with and without gradient
checkpointing, on CRS→LLM inputs (the longest: the CRS's ranking of 20 candidates in the prompt).

    .venv/bin/python bench/presales_memory.py                  # 6 steps per mode
    .venv/bin/python bench/presales_memory.py --steps 10 --out bench/presales_memory.json

Each mode trains in a fresh process (peak RSS is per process, and a second run in the same one
would inherit the first's). The examples and the CRS's outputs are the study's
(CRS_HOME/presales/study, written by ``scripts/presales_study.py``); run that first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from backend.settings import get_settings


def study_inputs(root: Path, per_task: int) -> tuple[dict[str, list], dict[str, str]]:
    """The ``per_task`` longest-prompt train examples of each task and the CRS's outputs."""
    from backend.models.presales.evaluate import partner_text
    from backend.models.presales.schema import TASKS, Example

    lines = (root / "examples.jsonl").read_text().splitlines()[1:]
    examples = [Example.from_json(json.loads(line)) for line in lines]
    train = [e for e in examples if e.split == "train"]
    by_id = {e.example_id: e for e in train}
    rows = json.loads((root / "partners-crs.json").read_text())
    outputs = {
        r["example_id"]: partner_text(by_id[r["example_id"]], r["output"])
        for r in rows
        if r["example_id"] in by_id
    }
    picked = {}
    for task in TASKS:
        mine = [e for e in train if e.task == task]
        mine.sort(key=lambda e: -len(outputs.get(e.example_id, "")) - len(e.candidates) * 50)
        picked[task] = mine[:per_task]
    return picked, outputs


def train_once(checkpointing: bool, steps: int, queue: Any) -> None:
    """One short CRS→LLM training run in this (child) process; puts its figures on ``queue``."""
    import torch

    from backend.data import load_dataset
    from backend.models.presales.llm import LLMConfig, train_llm

    torch.set_num_threads(1)
    root = get_settings().CRS_HOME / "presales" / "study"
    train, outputs = study_inputs(root, per_task=4)
    catalogs = {n: load_dataset(n).catalog for n in ("redial", "llm-redial")}
    cfg = LLMConfig(
        steps=steps, eval_every=steps, dev_examples=1, gradient_checkpointing=checkpointing
    )
    dev = {task: examples[:1] for task, examples in train.items()}
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        record = train_llm(train, dev, catalogs, cfg, Path(out), outputs)
        seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put(
        {
            "gradient_checkpointing": checkpointing,
            "steps": steps,
            "peak_rss_gb": round(peak_kib / 2**20, 2),
            "seconds_per_step": round(record.get("seconds_per_step", seconds / steps), 2),
            "final_loss": record["losses"][-1] if record.get("losses") else None,
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    for checkpointing in (False, True):
        queue = context.Queue()
        child = context.Process(target=train_once, args=(checkpointing, args.steps, queue))
        child.start()
        results.append(queue.get())
        child.join()
        print(json.dumps(results[-1]))
    summary = {"machine": platform.processor() or platform.machine(), "runs": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
