"""Analysis and export of a large synthetic campaign: how long each step takes.

    .venv/bin/python -m bench.analysis_export                          # 100,000 judgments
    .venv/bin/python -m bench.analysis_export --judgments 20000 --out bench/analysis.json

The campaign is written straight into a temporary SQLite database with bulk inserts (not through
the annotation submit path): 5 systems, 20 annotators, two rating criteria (relevance and
informativeness, 1–5) on every system's response to a context and one pairwise criterion
(overall) on every pair of systems per context, 3 annotators per task assigned round-robin, and
2 % of the judgments edited once (a second revision). Ratings follow a per-system quality plus
annotator bias and noise; pairwise choices follow the quality gap, with ties. Then it times
``judgments_frame``, ``rating_summary``, ``pairwise_summary``, ``agreement``, ``pairwise_ratings``
and ``export_campaign`` (all formats), each once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert

from db.analysis import (
    agreement,
    judgments_frame,
    pairwise_ratings,
    pairwise_summary,
    rating_summary,
)
from db.export import export_campaign
from db.schema import (
    Annotator,
    Assignment,
    Campaign,
    Context,
    Judgment,
    Response,
    System,
    Task,
)
from db.session import init_db, session_scope

log = logging.getLogger("bench.analysis_export")

CAMPAIGN = "bench"
SYSTEMS = {"popularity": 2.6, "retrieval": 3.0, "sasrec": 3.3, "llm-zero-shot": 3.6, "pecrs": 3.9}
RATING_CRITERIA = ("relevance", "informativeness")
ANNOTATORS = 20
OVERLAP = 3
EDITED_SHARE = 0.02
TIE_PROBABILITY = 0.2


def _criteria() -> list[dict[str, Any]]:
    rating = [
        {"name": name, "kind": "rating", "scale": [1, 5], "labels": {}, "rubric": ""}
        for name in RATING_CRITERIA
    ]
    pairwise = {"name": "overall", "kind": "pairwise", "scale": ["A", "B", "tie"], "labels": {}}
    return [*rating, {**pairwise, "rubric": ""}]


def populate(engine: Engine, judgments: int, seed: int = 0) -> int:
    """Write the synthetic campaign; returns the number of latest judgments written."""
    rng = np.random.default_rng(seed)
    names = list(SYSTEMS)
    quality = np.array(list(SYSTEMS.values()))
    pairs = list(itertools.combinations(range(len(names)), 2))
    # Per context: one rating task per system (two criteria each) and one pairwise task per pair.
    per_context = OVERLAP * (len(names) * len(RATING_CRITERIA) + len(pairs))
    n_contexts = math.ceil(judgments / per_context)
    start = datetime(2025, 1, 1, tzinfo=UTC)

    contexts = [
        {"id": c + 1, "source": "synthetic", "external_id": f"ctx-{c}", "dialogue": {"turns": []}}
        for c in range(n_contexts)
    ]
    responses = [
        {
            "id": c * len(names) + s + 1,
            "context_id": c + 1,
            "system_id": s + 1,
            "text": f"{names[s]} answer {c}",
            "items": [],
            "trace": [],
            "created_at": start,
        }
        for c in range(n_contexts)
        for s in range(len(names))
    ]
    tasks: list[dict[str, Any]] = []
    for c in range(n_contexts):
        for s in range(len(names)):
            tasks.append({"kind": "rating", "context_id": c + 1, "a": s, "b": None})
        for a, b in pairs:
            tasks.append({"kind": "pairwise", "context_id": c + 1, "a": a, "b": b})
    task_rows = [
        {
            "id": t + 1,
            "campaign_id": 1,
            "kind": task["kind"],
            "context_id": task["context_id"],
            "response_a_id": (task["context_id"] - 1) * len(names) + task["a"] + 1,
            "response_b_id": None
            if task["b"] is None
            else (task["context_id"] - 1) * len(names) + task["b"] + 1,
            "gold": None,
            "position": t,
        }
        for t, task in enumerate(tasks)
    ]

    bias = rng.normal(0.0, 0.4, ANNOTATORS)
    # Round-robin over the tasks in a random order: in task order every annotator triple would
    # see one system only (15 tasks per context, 20 annotators).
    turn = rng.permutation(len(tasks))
    assignments, judgment_rows = [], []
    latest = 0
    for t, task in enumerate(tasks):
        for slot in range(OVERLAP):
            annotator = int(OVERLAP * turn[t] + slot) % ANNOTATORS
            assignment_id = len(assignments) + 1
            assignments.append(
                {
                    "id": assignment_id,
                    "task_id": t + 1,
                    "annotator_id": annotator + 1,
                    "left_is_a": bool(rng.integers(2)),
                    "status": "done",
                    "assigned_at": start,
                }
            )
            if task["kind"] == "rating":
                scores = quality[task["a"]] + bias[annotator] + rng.normal(0.0, 0.8, 2)
                answers = [
                    {"criterion": criterion, "rating": int(np.clip(np.rint(score), 1, 5))}
                    for criterion, score in zip(RATING_CRITERIA, scores, strict=True)
                ]
            else:
                gap = quality[task["a"]] - quality[task["b"]]
                if rng.random() < TIE_PROBABILITY:
                    choice = "tie"
                else:
                    choice = "A" if rng.random() < 1 / (1 + math.exp(-2 * gap)) else "B"
                answers = [{"criterion": "overall", "choice": choice}]
            for answer in answers:
                submitted = start + timedelta(seconds=len(judgment_rows))
                row = {
                    "assignment_id": assignment_id,
                    "rating": None,
                    "choice": None,
                    "reason": None,
                    "revision": 0,
                    "submitted_at": submitted,
                    **answer,
                }
                if rng.random() < EDITED_SHARE:  # an earlier answer, then the edit that counts
                    judgment_rows.append({**row, "reason": "first thought"})
                    row = {**row, "revision": 1, "reason": "edited"}
                judgment_rows.append(row)
                latest += 1

    with session_scope(engine) as session:
        session.execute(insert(System), [{"id": i + 1, "name": n} for i, n in enumerate(names)])
        session.execute(
            insert(Campaign),
            [
                {
                    "id": 1,
                    "name": CAMPAIGN,
                    "template": "custom",
                    "criteria": _criteria(),
                    "task_kinds": ["rating", "pairwise"],
                    "overlap": OVERLAP,
                }
            ],
        )
        session.execute(
            insert(Annotator),
            [
                {"id": a + 1, "name": f"annotator-{a:02d}", "token_hash": f"{a:064x}"}
                for a in range(ANNOTATORS)
            ],
        )
        session.execute(insert(Context), contexts)
        session.execute(insert(Response), responses)
        session.execute(insert(Task), task_rows)
        session.execute(insert(Assignment), assignments)
        session.execute(insert(Judgment), judgment_rows)
    return latest


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    begin = time.perf_counter()
    result = function()
    return result, time.perf_counter() - begin


def run(judgments: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Populate a temporary database and time every step; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="crs-bench-") as tmp:
        engine = init_db(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
        written, populate_s = _timed(lambda: populate(engine, judgments, seed))
        frame, load_s = _timed(lambda: judgments_frame(engine, CAMPAIGN))
        steps = {"judgments_frame": load_s}
        _, steps["rating_summary"] = _timed(lambda: rating_summary(frame, n_boot=n_boot, seed=seed))
        _, steps["pairwise_summary"] = _timed(lambda: pairwise_summary(frame))
        _, steps["agreement"] = _timed(lambda: agreement(frame, n_boot=n_boot, seed=seed))
        _, steps["pairwise_ratings"] = _timed(
            lambda: pairwise_ratings(frame, n_boot=n_boot, seed=seed)
        )
        files, steps["export_campaign"] = _timed(
            lambda: export_campaign(engine, CAMPAIGN, Path(tmp) / "export", n_boot=n_boot)
        )
        engine.dispose()
        return {
            "judgments": written,
            "rows_loaded": len(frame),
            "n_boot": n_boot,
            "populate_s": populate_s,
            "steps_s": steps,
            "export_files": len(files),
            "export_bytes": sum(path.stat().st_size for path in files),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", type=int, default=100_000, help="latest judgments to write")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    figures = run(args.judgments, args.n_boot, args.seed)
    print(
        f"{figures['judgments']:,} judgments ({figures['rows_loaded']:,} loaded), "
        f"populated in {figures['populate_s']:.1f} s; n_boot={figures['n_boot']}"
    )
    print(f"{'step':<20} {'seconds':>8}")
    for step, seconds in figures["steps_s"].items():
        print(f"{step:<20} {seconds:>8.2f}")
    print(f"export: {figures['export_files']} files, {figures['export_bytes'] / 1e6:.1f} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
