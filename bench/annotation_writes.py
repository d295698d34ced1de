"""Judgment writes per second into SQLite (WAL) with 1 and with 20 concurrent writers.

Each writer is one annotator submitting their queue through ``db.annotation.submit`` (one
``BEGIN IMMEDIATE`` transaction per submit: validate, read the latest revisions, insert one
judgment per criterion, update the status, log the event). Writers are threads of one process, as
Streamlit serves every browser session from threads of one server process.

    python bench/annotation_writes.py [--tasks 50] [--writers 1 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from db.annotation import assign_tasks, create_annotator, queue, submit
from db.schema import Campaign, Context, Response, System, Task
from db.session import get_engine, init_db, session_scope

CRITERIA = [
    {"name": name, "kind": "rating", "scale": [1, 5], "labels": {}, "rubric": ""}
    for name in ("fluency", "informativeness", "relevance")
]


def _campaign(url: str, tasks: int, writers: int) -> dict[int, list[int]]:
    """A campaign whose every task goes to every writer; returns each writer's assignment ids."""
    engine = init_db(url)
    with session_scope(engine) as session:
        campaign = Campaign(name="bench", criteria=CRITERIA, task_kinds=["rating"], overlap=writers)
        system = System(name="bench")
        session.add_all([campaign, system])
        session.flush()
        for i in range(tasks):
            context = Context(source="bench", external_id=str(i), dialogue={"id": str(i)})
            reply = Response(context=context, system=system, text=f"reply {i}")
            session.add_all([context, reply])
            session.flush()
            session.add(
                Task(
                    campaign_id=campaign.id,
                    kind="rating",
                    context_id=context.id,
                    response_a_id=reply.id,
                    position=i,
                )
            )
    annotators = [create_annotator(engine, f"writer{w}")[0].id for w in range(writers)]
    assign_tasks(engine, "bench")
    return {a: [e.assignment_id for e in queue(engine, a, "bench")] for a in annotators}


def run(writers: int, tasks: int) -> dict[str, Any]:
    """Submit ``tasks`` tasks per writer with ``writers`` threads; return throughput and latency."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        work = _campaign(url, tasks, writers)
        engine = get_engine(url)
        latencies: list[float] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(writers + 1)
        lock = threading.Lock()

        def write(annotator: int, assignments: list[int]) -> None:
            mine = []
            barrier.wait()
            try:
                for assignment in assignments:
                    answers = {c["name"]: 1 + (assignment + i) % 5 for i, c in enumerate(CRITERIA)}
                    began = time.perf_counter()
                    submit(engine, assignment, annotator, answers)
                    mine.append(time.perf_counter() - began)
            except BaseException as error:  # reported below; a thread's exception is otherwise lost
                errors.append(error)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=write, args=item) for item in work.items()]
        for thread in threads:
            thread.start()
        barrier.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        engine.dispose()
    if errors:
        raise RuntimeError(f"{len(errors)} submits failed; first: {errors[0]!r}")
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    submits = len(latencies)
    return {
        "writers": writers,
        "submits": submits,
        "judgments": submits * len(CRITERIA),
        "seconds": seconds,
        "submits_per_s": submits / seconds,
        "judgments_per_s": submits * len(CRITERIA) / seconds,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50, help="tasks per writer")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = [run(writers, args.tasks) for writers in args.writers]
    print(
        f"{'writers':>7} {'submits':>7} {'judgments/s':>11} {'submits/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in rows:
        print(
            f"{r['writers']:>7} {r['submits']:>7} {r['judgments_per_s']:>11.0f} "
            f"{r['submits_per_s']:>9.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
        )
    if args.out:
        report = {
            "criteria_per_submit": len(CRITERIA),
            "tasks_per_writer": args.tasks,
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "runs": rows,
        }
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
