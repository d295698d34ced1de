"""The database layer on SQLite and on a real PostgreSQL that the tests start in a temp dir.

PostgreSQL tests are skipped when the server binaries or psycopg are missing.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from backend.types import Dialogue, Turn
from db.arena import AlreadyVoted, export_arena_round, list_votes, record_vote, votes_to_battles
from db.schema import (
    Annotator,
    ArenaVote,
    Assignment,
    Base,
    Campaign,
    Context,
    Judgment,
    Response,
    System,
    Task,
)
from db.session import alembic_config, get_engine, get_or_create, init_db, session_scope

TABLES = {
    "systems",
    "contexts",
    "responses",
    "campaigns",
    "annotators",
    "task_imports",
    "tasks",
    "assignments",
    "judgments",
    "events",
    "arena_votes",
}


# --- databases ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1; yields the URL of its maintenance database."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    # PostgreSQL refuses to run as root; run it as the postgres user then.
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
    root = Path(tempfile.mkdtemp(prefix="crs-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid} if user is not None else {}
    data, port = root / "data", _free_port()
    subprocess.run(
        [
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-locale",
            "--encoding=UTF8",
        ],
        check=True,
        capture_output=True,
        **run_as,
    )
    # fsync off: a test server's data need not survive a crash.
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"
    start = [bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-o", options, "-w", "start"]
    subprocess.run(start, check=True, capture_output=True, **run_as)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"]
        subprocess.run(stop, capture_output=True, **run_as)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the test PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'arena.sqlite'}"
    else:
        admin_url = request.getfixturevalue("postgres_server")
        name = f"test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    get_engine(url).dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'arena.sqlite'}"
    yield url
    get_engine(url).dispose()


def _conversation(model: str, answer_items: list[str]) -> Dialogue:
    return Dialogue(
        id="round",
        turns=[
            Turn(role="user", text="Any crime movies like Heat?", items=["1"]),
            Turn(role="system", text=f"{model} suggests these.", items=answer_items),
        ],
    )


def _vote(engine_url: str, round_id: str, vote: str = "A", **overrides: object) -> ArenaVote:
    fields: dict[str, object] = {
        "round_id": round_id,
        "model_a": "popularity",
        "model_b": "pecrs",
        "left_model": "pecrs",
        "vote": vote,
        "conversation_a": _conversation("popularity", ["2"]),
        "conversation_b": _conversation("pecrs", ["3", "4"]),
        "session_id": "s1",
    }
    fields.update(overrides)
    return record_vote(get_engine(engine_url), **fields)  # type: ignore[arg-type]


# --- migrations and connection setup -----------------------------------------------------------


def test_migrating_to_head_matches_the_models(db_url: str) -> None:
    engine = init_db(db_url)
    init_db(db_url)  # a second start-up finds nothing to do

    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head
        assert compare_metadata(context, Base.metadata) == []


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = init_db(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(Response(context_id=999, system_id=999, text="orphan"))


def test_default_database_lives_under_crs_home(_isolated_home: Path) -> None:
    assert Path(get_engine().url.database).is_relative_to(_isolated_home)


def test_naive_datetimes_are_refused(sqlite_url: str) -> None:
    init_db(sqlite_url)
    with pytest.raises(StatementError, match="naive datetime"):
        _vote(sqlite_url, "r1", voted_at=datetime(2025, 1, 1))


# --- idempotent submits ------------------------------------------------------------------------


def test_unique_constraints_make_double_submits_idempotent(db_url: str) -> None:
    engine = init_db(db_url)

    def submit() -> tuple[int, bool]:
        with session_scope(engine) as session:
            campaign, _ = get_or_create(session, Campaign, name="study")
            annotator, _ = get_or_create(
                session, Annotator, defaults={"token_hash": "ab" * 32}, name="ann"
            )
            system, _ = get_or_create(session, System, name="pecrs", version="v1")
            context, _ = get_or_create(
                session,
                Context,
                defaults={"dialogue": {"id": "d1"}},
                source="redial",
                external_id="d1",
            )
            response, _ = get_or_create(
                session,
                Response,
                defaults={"text": "Heat!"},
                context_id=context.id,
                system_id=system.id,
            )
            task, _ = get_or_create(
                session,
                Task,
                campaign_id=campaign.id,
                kind="rating",
                context_id=context.id,
                response_a_id=response.id,
                response_b_id=None,
            )
            assignment, _ = get_or_create(
                session, Assignment, task_id=task.id, annotator_id=annotator.id
            )
            judgment, created = get_or_create(
                session,
                Judgment,
                defaults={"rating": 4},
                assignment_id=assignment.id,
                criterion="fluency",
                revision=0,
            )
            return judgment.id, created

    first, second = submit(), submit()
    assert first[1] and not second[1]
    assert first[0] == second[0]
    with session_scope(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Judgment)) == 1
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        assignment_id = session.scalars(select(Assignment.id)).one()

    # The database itself refuses a second row for the same (assignment, criterion, revision).
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(
            Judgment(assignment_id=assignment_id, criterion="fluency", rating=2, revision=0)
        )


# --- arena -------------------------------------------------------------------------------------


def test_record_vote_round_trip_and_already_voted(db_url: str) -> None:
    init_db(db_url)
    started = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    vote = _vote(db_url, "r1", "A", started_at=started)
    again = _vote(db_url, "r1", "A", started_at=started)
    assert again.id == vote.id
    with pytest.raises(AlreadyVoted, match="r1"):
        _vote(db_url, "r1", "B")
    _vote(db_url, "r2", "tie", mode="named", left_model="popularity")

    blind = list_votes(get_engine(db_url))
    assert [v.round_id for v in blind] == ["r1"]
    stored = blind[0]
    assert stored.vote == "A" and stored.left_model == "pecrs"
    # "A" is the left side, where pecrs (model_b) was shown: model_b won.
    assert stored.outcome == "B"
    assert stored.started_at == started and stored.voted_at.tzinfo is not None
    assert Dialogue.model_validate(stored.conversation_b).turns[-1].items == ["3", "4"]

    everything = list_votes(get_engine(db_url), blind_only=False)
    assert votes_to_battles(everything) == [
        ("popularity", "pecrs", "B"),
        ("popularity", "pecrs", "tie"),
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vote", "C", "`vote`"),
        ("mode", "secret", "`mode`"),
        ("left_model", "sasrec", "`left_model`"),
        ("conversation_a", {"turns": "nope"}, "conversation_a"),
    ],
)
def test_record_vote_names_the_bad_input(
    sqlite_url: str, field: str, value: object, message: str
) -> None:
    init_db(sqlite_url)
    with pytest.raises(ValueError, match=message):
        _vote(sqlite_url, "r1", **{field: value})


def test_export_arena_round_creates_a_pairwise_task(db_url: str) -> None:
    engine = init_db(db_url)
    _vote(db_url, "r1", "A", model_a_version="v1")
    _vote(db_url, "r2", "B")

    task = export_arena_round(engine, "r1")
    assert export_arena_round(engine, "r1").id == task.id
    second = export_arena_round(engine, "r2")
    assert (task.kind, task.position, second.position) == ("pairwise", 0, 1)

    with session_scope(engine, write=False) as session:
        task = session.get_one(Task, task.id)
        assert task.campaign.name == "arena"
        assert task.campaign.criteria[0]["name"] == "overall"
        assert task.campaign.criteria[0]["scale"] == ["A", "B", "tie"]
        assert (task.context.source, task.context.external_id) == ("arena", "r1")
        assert [t["role"] for t in task.context.dialogue["turns"]] == ["user"]
        assert (task.response_a.system.name, task.response_a.system.version) == ("popularity", "v1")
        assert task.response_b is not None and task.response_b.system.name == "pecrs"
        assert [i["item_id"] for i in task.response_b.items] == ["3", "4"]

    with pytest.raises(LookupError, match="no arena vote"):
        export_arena_round(engine, "never-voted")


# --- concurrency -------------------------------------------------------------------------------


def _write_votes(url: str, worker: int, count: int, barrier: Barrier) -> None:
    barrier.wait()  # both processes start writing at the same moment
    for i in range(count):
        _vote(url, f"w{worker}-{i}", "A" if i % 2 else "tie")


def test_concurrent_sqlite_writers_never_see_database_is_locked(sqlite_url: str) -> None:
    init_db(sqlite_url)
    get_engine(sqlite_url).dispose()  # nothing open in the parent while the workers write
    workers, per_worker = 2, 50
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(workers)
    processes = [
        spawn.Process(target=_write_votes, args=(sqlite_url, w, per_worker, barrier))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers  # a "database is locked" exits 1
    with session_scope(get_engine(sqlite_url), write=False) as session:
        assert session.scalar(select(func.count()).select_from(ArenaVote)) == workers * per_worker


def test_upgrading_a_0001_database_keys_existing_rows_by_their_content(sqlite_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from db.schema import content_hash

    engine = get_engine(sqlite_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        dialogue = {"id": "1", "turns": [{"role": "user", "text": "Hi", "items": []}]}
        connection.execute(
            text("INSERT INTO contexts (source, external_id, dialogue) VALUES ('import', '1', :d)"),
            {"d": json.dumps(dialogue)},
        )
        connection.execute(
            text("INSERT INTO systems (name, version, description) VALUES ('s', '', '')")
        )
        connection.execute(
            text(
                "INSERT INTO responses (context_id, system_id, text, items, trace, created_at) "
                "VALUES (1, 1, 'Try Heat.', '[]', '[]', '2026-11-01 00:00:00')"
            )
        )
    init_db(sqlite_url)  # 0001 -> head with the rows in place
    with engine.connect() as connection:
        context_hash = connection.execute(text("SELECT content_hash FROM contexts")).scalar()
        response_hash = connection.execute(text("SELECT content_hash FROM responses")).scalar()
    assert context_hash == content_hash(dialogue, None)
    assert response_hash == content_hash("Try Heat.", [])
