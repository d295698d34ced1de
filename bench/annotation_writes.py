"""Judgment writes into SQLite (WAL): concurrent annotators alone, or during a bulk task import.

Each writer is one annotator submitting their queue through ``db.annotation.submit`` (one
``BEGIN IMMEDIATE`` transaction per submit: validate, read the latest revisions, insert one
judgment per criterion, update the status, log the event).

* ``--scenario writers`` (default): 1 and 20 writers as threads of one process, as Streamlit
  serves every browser session from threads of one server process; throughput and latency.
* ``--scenario bulk-import``: 50 writer processes (each its own SQLite connection and busy wait,
  like several app workers) keep submitting while another process imports a large JSONL task file
  into a second campaign with ``db.tasks.import_task_file`` (as ``crs tasks import`` does) and
  then assigns it with ``assign_tasks``. Reports submits acknowledged vs stored, duplicates, the
  errors an annotator would have seen (``DatabaseBusy`` counted apart), submit latency, and the
  import's duration and longest write transaction.

    python bench/annotation_writes.py [--tasks 50] [--writers 1 20] [--out FILE.json]
    python bench/annotation_writes.py --scenario bulk-import [--writers 50] [--rows 4000]
        [--tasks 400] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, func, select

from db.annotation import DatabaseBusy, assign_tasks, create_annotator, queue, submit
from db.schema import (
    Assignment,
    Campaign,
    Context,
    Event,
    Judgment,
    Response,
    System,
    Task,
    TaskImport,
)
from db.session import get_engine, init_db, session_scope
from db.tasks import import_task_file

CRITERIA = [
    {"name": name, "kind": "rating", "scale": [1, 5], "labels": {}, "rubric": ""}
    for name in ("fluency", "informativeness", "relevance")
]
SCENARIOS = ("writers", "bulk-import")
BULK_CAMPAIGN = "bulk"


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


def _answers(assignment: int) -> dict[str, int]:
    """The answers a writer gives to ``assignment``: fixed by its id, so they can be checked."""
    return {c["name"]: 1 + (assignment + i) % 5 for i, c in enumerate(CRITERIA)}


def _quantiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if len(latencies) < 2:
        only = latencies[0] * 1000 if latencies else None
        return {"p50_ms": only, "p99_ms": only, "max_ms": only}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "max_ms": max(latencies) * 1000}


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
                    began = time.perf_counter()
                    submit(engine, assignment, annotator, _answers(assignment))
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


# --- scenario "bulk-import" -------------------------------------------------------------------


def write_task_file(path: Path, rows: int) -> Path:
    """A JSONL task file of ``rows`` rating tasks, each on a context of its own."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            row = {
                "context_id": f"bulk-{i}",
                "source": "bulk",
                "context": [
                    {"role": "user", "text": f"I liked film {i}. Anything similar?"},
                    {"role": "system", "text": "Do you prefer recent films?"},
                    {"role": "user", "text": "Yes, from the last ten years."},
                ],
                "system_a": ("retrieval", "popularity")[i % 2],
                "response_a": f"You could try film {i + 1}, it is recent and similar.",
                "items_a": [f"Film {i + 1}", f"Film {i + 2}"],
            }
            out.write(json.dumps(row) + "\n")
    return path


def time_write_transactions(engine: Engine) -> list[tuple[float, float, float]]:
    """Record this process's write transactions on ``engine``; returns the list being filled.

    One ``(began, waited_s, held_s)`` per transaction: ``waited_s`` is how long ``BEGIN
    IMMEDIATE`` waited for SQLite's write lock, ``held_s`` the time from getting it to the
    connection's return to the pool (after the commit or rollback). Single-threaded callers only.
    """
    spans: list[tuple[float, float, float]] = []
    state: dict[str, float] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _asking(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            state["asked"] = time.monotonic()

    @event.listens_for(engine, "after_cursor_execute")
    def _locked(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            state["locked"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _released(*args: Any) -> None:
        if "locked" in state:
            now = time.monotonic()
            locked = state.pop("locked")
            asked = state.pop("asked", locked)
            spans.append((asked, locked - asked, now - locked))

    return spans


def _importer(url: str, path: Path, out: Path, barrier: Any, done: Any) -> None:
    """Import ``path`` into the bulk campaign, then assign it; write what happened to ``out``."""
    engine = get_engine(url)
    spans = time_write_transactions(engine)
    report: dict[str, Any] = {"error": None}
    barrier.wait()
    try:
        report["import_began"] = time.monotonic()
        rows, created = import_task_file(engine, path, BULK_CAMPAIGN)
        report["import_ended"] = time.monotonic()
        report["import_spans"] = len(spans)
        report.update(rows=rows, created=created)
        assigned = assign_tasks(engine, BULK_CAMPAIGN)
        report["assign_ended"] = time.monotonic()
        report["assigned"] = assigned
    except Exception as error:  # reported, not raised: the figures say what went wrong
        report["error"] = f"{type(error).__name__}: {error}"
        report["failed_at"] = time.monotonic()
    finally:
        done.set()
        report["spans"] = spans
        out.write_text(json.dumps(report))


def _writer(
    url: str, annotator: int, assignments: list[int], out: Path, barrier: Any, done: Any
) -> None:
    """Submit ``assignments`` one by one until the import is done; write each outcome to ``out``.

    An exception from ``submit`` is what the annotator would see on the page: it is recorded and
    the writer goes on with the next task.
    """
    engine = get_engine(url)
    submits: list[list[Any]] = []
    errors: list[list[Any]] = []
    barrier.wait()
    for assignment in assignments:
        if done.is_set():
            break
        began = time.monotonic()
        try:
            outcome = submit(engine, assignment, annotator, _answers(assignment))
        except Exception as error:
            kind = "busy" if isinstance(error, DatabaseBusy) else type(error).__name__
            errors.append([assignment, began, time.monotonic() - began, kind, str(error)[:300]])
        else:
            submits.append([assignment, began, time.monotonic() - began, outcome])
    report = {"submits": submits, "errors": errors, "ran_out": not done.is_set()}
    out.write_text(json.dumps(report))


def _stored(engine: Engine, acknowledged: set[int]) -> dict[str, int]:
    """What the bench campaign holds, compared with the acknowledged submits."""
    with session_scope(engine, write=False) as session:
        bench = select(Campaign.id).where(Campaign.name == "bench").scalar_subquery()
        mine = select(Assignment.id).join(Task).where(Task.campaign_id == bench)
        done = set(session.scalars(mine.where(Assignment.status == "done")))
        judgments = session.execute(
            select(Judgment.assignment_id, Judgment.criterion, Judgment.rating).where(
                Judgment.assignment_id.in_(mine)
            )
        ).all()
        events = session.scalars(
            select(Event.assignment_id).where(
                Event.kind == "submitted", Event.assignment_id.in_(mine)
            )
        ).all()
    per_key = Counter((a, c) for a, c, _ in judgments)
    per_event = Counter(events)
    complete = Counter(a for a, _ in per_key)
    wrong = sum(rating != _answers(a)[c] for a, c, rating in judgments)
    return {
        "stored": len(done),
        "acknowledged_not_stored": len(
            {a for a in acknowledged if a not in done or complete[a] != len(CRITERIA)}
        ),
        "stored_not_acknowledged": len(done - acknowledged),
        "duplicate_judgments": sum(n - 1 for n in per_key.values()),
        "duplicate_events": sum(n - 1 for n in per_event.values()),
        "wrong_values": wrong,
    }


def run_bulk_import(writers: int, tasks: int, rows: int) -> dict[str, Any]:
    """``writers`` processes submit while one process imports ``rows`` tasks and assigns them."""
    fork = multiprocessing.get_context("fork")  # children start at once, with the setup loaded
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'bench.sqlite'}"
        work = _campaign(url, tasks, writers)
        path = write_task_file(tmp / "tasks.jsonl", rows)
        get_engine(url).dispose()  # the children open their own connections
        barrier, done = fork.Barrier(writers + 2), fork.Event()
        processes = [
            fork.Process(
                target=_writer,
                args=(url, annotator, assignments, tmp / f"w{k}.json", barrier, done),
            )
            for k, (annotator, assignments) in enumerate(work.items())
        ]
        processes.append(
            fork.Process(target=_importer, args=(url, path, tmp / "import.json", barrier, done))
        )
        for process in processes:
            process.start()
        barrier.wait()
        began = time.monotonic()
        for process in processes:
            process.join()
        seconds = time.monotonic() - began
        crashed = [p.exitcode for p in processes if p.exitcode != 0]
        imported = json.loads((tmp / "import.json").read_text())
        reports = [json.loads((tmp / f"w{k}.json").read_text()) for k in range(writers)]
        submits = [s for r in reports for s in r["submits"]]
        errors = [e for r in reports for e in r["errors"]]
        engine = get_engine(url)
        stored = _stored(engine, {s[0] for s in submits})
        with session_scope(engine, write=False) as session:
            bulk = select(Campaign.id).where(Campaign.name == BULK_CAMPAIGN).scalar_subquery()
            bulk_tasks = session.scalar(select(func.count()).where(Task.campaign_id == bulk))
            import_status = session.scalars(
                select(TaskImport.status).where(TaskImport.campaign_id == bulk)
            ).all()
        engine.dispose()

    spans = imported.pop("spans")
    import_spans = spans[: imported.get("import_spans", len(spans))]
    assign_spans = spans[len(import_spans) :]
    error_kinds = Counter(e[3] for e in errors)
    latencies = [s[2] for s in submits]
    import_began = imported.get("import_began", began)
    import_ended = imported.get("import_ended", imported.get("failed_at", began))
    return {
        "writers": writers,
        "tasks_per_writer": tasks,
        "seconds": seconds,
        "acknowledged": len(submits),
        "outcomes": dict(Counter(s[3] for s in submits)),
        **stored,
        "duplicates": stored["duplicate_judgments"] + stored["duplicate_events"],
        "errors": len(errors),
        "errors_busy": error_kinds.pop("busy", 0),
        "errors_other": dict(error_kinds),
        "error_examples": sorted({f"{e[3]}: {e[4]}" for e in errors})[:5],
        "crashed_processes": crashed,
        "writers_out_of_work": sum(r["ran_out"] for r in reports),
        "submits_started_during_import": sum(import_began <= s[1] < import_ended for s in submits),
        "submit_latency": _quantiles_ms(latencies),
        "submit_latency_during_import": _quantiles_ms(
            [s[2] for s in submits if import_began <= s[1] < import_ended]
        ),
        "errored_submit_latency": _quantiles_ms([e[2] for e in errors]),
        "import": {
            "rows": rows,
            "rows_read": imported.get("rows"),
            "tasks_created": imported.get("created"),
            "tasks_in_campaign": bulk_tasks,
            "status": import_status,
            "error": imported["error"],
            "seconds": import_ended - import_began,
            "write_transactions": len(import_spans),
            "longest_write_transaction_ms": max((s[2] for s in import_spans), default=0) * 1000,
            "median_write_transaction_ms": (
                statistics.median(s[2] for s in import_spans) * 1000 if import_spans else None
            ),
            "longest_wait_for_lock_ms": max((s[1] for s in import_spans), default=0) * 1000,
        },
        "assign": {
            "assignments": imported.get("assigned"),
            "seconds": imported.get("assign_ended", import_ended) - import_ended,
            "write_transactions": len(assign_spans),
            "longest_write_transaction_ms": max((s[2] for s in assign_spans), default=0) * 1000,
        },
    }


def _print_bulk(r: dict[str, Any]) -> None:
    lat, imp, asg = r["submit_latency"], r["import"], r["assign"]
    print(
        f"{r['writers']} writer processes, {r['seconds']:.1f} s; "
        f"import of {imp['rows']} rows: {imp['seconds']:.1f} s, status {imp['status']}, "
        f"{imp['tasks_in_campaign']} tasks, {imp['write_transactions']} write transactions, "
        f"longest {imp['longest_write_transaction_ms']:.0f} ms "
        f"(median {imp['median_write_transaction_ms'] or 0:.0f} ms), "
        f"longest wait for the lock {imp['longest_wait_for_lock_ms']:.0f} ms"
    )
    if imp["error"]:
        print(f"import FAILED: {imp['error']}")
    print(
        f"assign: {asg['assignments']} assignments in {asg['seconds']:.1f} s, "
        f"longest write transaction {asg['longest_write_transaction_ms']:.0f} ms"
    )
    print(
        f"{'acknowledged':>12} {'stored':>6} {'ack!stored':>10} {'duplicates':>10} "
        f"{'errors':>6} {'busy':>4} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8}"
    )
    print(
        f"{r['acknowledged']:>12} {r['stored']:>6} {r['acknowledged_not_stored']:>10} "
        f"{r['duplicates']:>10} {r['errors']:>6} {r['errors_busy']:>4} "
        f"{lat['p50_ms'] or 0:>7.1f} {lat['p99_ms'] or 0:>8.1f} {lat['max_ms'] or 0:>8.1f}"
    )
    for example in r["error_examples"]:
        print(f"error: {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="writers")
    parser.add_argument(
        "--tasks",
        type=int,
        help="tasks per writer (default 50; bulk-import: 400, the most a writer can submit)",
    )
    parser.add_argument(
        "--writers", type=int, nargs="+", help="writer counts (default 1 20; bulk-import: 50)"
    )
    parser.add_argument(
        "--rows", type=int, default=4000, help="bulk-import: rows in the imported task file"
    )
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    bulk = args.scenario == "bulk-import"
    tasks = args.tasks or (400 if bulk else 50)
    writers = args.writers or ([50] if bulk else [1, 20])
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "criteria_per_submit": len(CRITERIA),
        "tasks_per_writer": tasks,
        "cpus": os.cpu_count(),
        "load_before": load_before,
    }
    if bulk:
        rows = [run_bulk_import(n, tasks, args.rows) for n in writers]
        for r in rows:
            _print_bulk(r)
    else:
        rows = [run(n, tasks) for n in writers]
        print(
            f"{'writers':>7} {'submits':>7} {'judgments/s':>11} {'submits/s':>9} "
            f"{'p50 ms':>7} {'p99 ms':>7}"
        )
        for r in rows:
            print(
                f"{r['writers']:>7} {r['submits']:>7} {r['judgments_per_s']:>11.0f} "
                f"{r['submits_per_s']:>9.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}"
            )
    if args.out:
        report.update(load_after=os.getloadavg(), runs=rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
