"""A bulk task import must not lock annotators out, and a lock that never lifts must read plainly.

The import runs beside an annotator who keeps submitting: once in a thread of the same process
(the admin page imports inside the app's server) and once in a process of its own (``crs tasks
import`` next to a running app). No test here asserts a duration: whether annotators got in is
read from what the database holds, and from how many imported tasks were committed while each
submit was waiting.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

import db.annotation as annotation
import db.session
from db.annotation import DatabaseBusy, assign_tasks, create_annotator, queue, submit
from db.schema import Assignment, Campaign, Event, Judgment, Task, TaskImport
from db.session import get_engine, init_db, session_scope
from db.tasks import IMPORT_CHUNK, import_task_file
from tests.test_annotation import build_campaign

ROWS = 3000  # a few thousand: the import takes seconds, dozens of chunks
SUBMITS = 30
BULK = "bulk"
# A submit may wait for the chunk being written and the next one, not for the import to finish.
CHUNKS_A_SUBMIT_MAY_WAIT = 3


def write_task_file(path: Path, rows: int) -> Path:
    """A JSONL file of ``rows`` rating tasks, one context each."""
    lines = [
        json.dumps(
            {
                "context_id": f"bulk-{i}",
                "source": "bulk",
                "context": [{"role": "user", "text": f"I liked film {i}. Anything like it?"}],
                "system_a": ("retrieval", "popularity")[i % 2],
                "response_a": f"Try film {i + 1}.",
                "items_a": [f"Film {i + 1}"],
            }
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _import_in_process(url: str, path: str) -> None:
    """Target of the importer process (module level, so that "spawn" can find it)."""
    import_task_file(get_engine(url), path, BULK)


def _bulk_tasks(engine: Engine) -> int:
    with session_scope(engine, write=False) as session:
        bulk = select(Campaign.id).where(Campaign.name == BULK).scalar_subquery()
        return session.scalar(select(func.count()).where(Task.campaign_id == bulk)) or 0


@dataclass
class BulkRun:
    """What happened while an annotator submitted during a bulk import."""

    engine: Engine
    campaign: int
    answers: dict[int, dict[str, int]] = field(default_factory=dict)  # acknowledged, by assignment
    outcomes: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    waited_behind: list[int] = field(default_factory=list)  # imported tasks committed per submit
    import_running_at_first_submit: bool = False
    import_failure: str | None = None


@pytest.fixture(scope="module", params=["thread", "process"])
def bulk_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BulkRun]:
    """Import ``ROWS`` tasks into a new campaign while two annotators submit ``SUBMITS`` answers."""
    tmp = tmp_path_factory.mktemp(f"bulk-{request.param}")
    url = f"sqlite:///{tmp / 'bulk.sqlite'}"
    engine = init_db(url)
    campaign = build_campaign(engine, ratings=SUBMITS // 2, pairs=0, overlap=2)
    annotators = [create_annotator(engine, f"ann{i}")[0].id for i in range(2)]
    assign_tasks(engine, campaign)
    queues = [[(a, e.assignment_id) for e in queue(engine, a, campaign)] for a in annotators]
    work = [item for pair in zip(*queues, strict=True) for item in pair]
    path = write_task_file(tmp / "bulk.jsonl", ROWS)
    run = BulkRun(engine, campaign)

    thread_failures: list[BaseException] = []
    importer: threading.Thread | multiprocessing.process.BaseProcess
    if request.param == "thread":

        def import_in_thread() -> None:
            try:
                import_task_file(engine, path, BULK)
            except BaseException as error:  # kept: an exception in a thread is otherwise lost
                thread_failures.append(error)

        importer = threading.Thread(target=import_in_thread)
    else:
        engine.dispose()  # nothing pooled in this process while the importer starts
        importer = multiprocessing.get_context("spawn").Process(
            target=_import_in_process, args=(url, str(path))
        )
    importer.start()
    try:
        while importer.is_alive() and _bulk_tasks(engine) == 0:
            time.sleep(0.005)  # start submitting once the import writes its first chunk
        run.import_running_at_first_submit = importer.is_alive() and _bulk_tasks(engine) < ROWS
        for annotator, assignment in work:
            answers = {"fluency": 1 + assignment % 5, "relevance": assignment % 3}
            before = _bulk_tasks(engine)
            try:
                run.outcomes.append(submit(engine, assignment, annotator, answers))
            except Exception as error:  # what the annotator would see on the page
                run.errors.append(error)
            else:
                run.answers[assignment] = answers
            run.waited_behind.append(_bulk_tasks(engine) - before)
    finally:
        importer.join(timeout=300)
    if isinstance(importer, threading.Thread):
        run.import_failure = repr(thread_failures[0]) if thread_failures else None
    elif importer.exitcode != 0:
        run.import_failure = f"the importer process exited with {importer.exitcode}"
    yield run
    engine.dispose()


def test_submits_during_a_bulk_import_are_all_stored_once(bulk_run: BulkRun) -> None:
    engine = bulk_run.engine
    assert bulk_run.import_running_at_first_submit, "the import ended before any submit: add rows"
    assert bulk_run.errors == []
    assert bulk_run.outcomes == ["submitted"] * SUBMITS
    with session_scope(engine, write=False) as session:
        judgments = session.execute(
            select(Judgment.assignment_id, Judgment.criterion, Judgment.rating, Judgment.revision)
            .join(Assignment)
            .join(Task)
            .where(Task.campaign_id == bulk_run.campaign)
        ).all()
        done = set(
            session.scalars(
                select(Assignment.id)
                .join(Task)
                .where(Task.campaign_id == bulk_run.campaign, Assignment.status == "done")
            )
        )
        submitted = session.scalar(select(func.count()).where(Event.kind == "submitted"))
    assert done == set(bulk_run.answers)
    stored = {(a, criterion): rating for a, criterion, rating, _ in judgments}
    assert len(judgments) == len(stored) == 2 * SUBMITS  # one row per answer, none twice
    assert stored == {
        (a, criterion): value
        for a, answers in bulk_run.answers.items()
        for criterion, value in answers.items()
    }
    assert submitted == SUBMITS


def test_the_bulk_import_finishes_and_its_tasks_can_be_assigned(bulk_run: BulkRun) -> None:
    assert bulk_run.import_failure is None
    engine = bulk_run.engine
    assert _bulk_tasks(engine) == ROWS
    with session_scope(engine, write=False) as session:
        bulk = select(Campaign.id).where(Campaign.name == BULK).scalar_subquery()
        statuses = session.scalars(select(TaskImport.status).where(TaskImport.campaign_id == bulk))
        assert list(statuses) == ["done"]
    assert assign_tasks(engine, BULK) == 2 * ROWS  # overlap 3, but there are two annotators


def test_a_submit_waits_for_an_import_chunk_not_for_the_whole_import(bulk_run: BulkRun) -> None:
    """The import writes ``IMPORT_CHUNK`` tasks per transaction so that annotators get in between
    chunks. A submit behind which many chunks were committed was held off by the import."""
    assert bulk_run.import_running_at_first_submit, "the import ended before any submit: add rows"
    longest = max(bulk_run.waited_behind)
    assert longest <= CHUNKS_A_SUBMIT_MAY_WAIT * IMPORT_CHUNK, (
        f"one submit waited while the import committed {longest} tasks "
        f"({longest / IMPORT_CHUNK:.0f} chunks of {IMPORT_CHUNK}); per submit: "
        f"{bulk_run.waited_behind}"
    )


# --- a database that stays locked ---------------------------------------------------------------


def test_a_submit_locked_out_for_good_says_so_in_plain_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds SQLite's write lock (a real ``BEGIN IMMEDIATE``) for longer than
    a submit's patience: the annotator gets ``DatabaseBusy``, nothing half-saved, and the same
    submit goes through once the lock is released."""
    patience_s = 0.3
    monkeypatch.setattr(db.session, "SQLITE_BUSY_TIMEOUT_S", 0.05)  # read when the engine is made
    monkeypatch.setattr(annotation, "SUBMIT_PATIENCE_S", patience_s)
    path = tmp_path / "locked.sqlite"
    engine = init_db(f"sqlite:///{path}")
    campaign = build_campaign(engine, ratings=1, pairs=0)
    annotator = create_annotator(engine, "ann")[0].id
    assign_tasks(engine, campaign)
    assignment = queue(engine, annotator, campaign)[0].assignment_id

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseBusy) as caught:
            submit(engine, assignment, annotator, {"fluency": 4, "relevance": 2})
    finally:
        holder.rollback()
        holder.close()

    message = str(caught.value)
    assert message == DatabaseBusy.MESSAGE
    for jargon in ("sqlite", "operationalerror", "locked", "sql", "traceback"):
        assert jargon not in message.lower()
    assert isinstance(caught.value.__cause__, OperationalError)  # the detail stays for the logs
    with session_scope(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Judgment)) == 0
        assert session.get(Assignment, assignment).status == "pending"  # type: ignore[union-attr]
    assert submit(engine, assignment, annotator, {"fluency": 4, "relevance": 2}) == "submitted"
    engine.dispose()
