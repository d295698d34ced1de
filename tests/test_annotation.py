"""The annotator side of human evaluation (db.annotation): links, assignment, answers, checks.

Runs on SQLite and on the throwaway PostgreSQL of tests/test_db.py; the concurrency test is for
SQLite's write lock. ``build_campaign`` is shared with tests/test_annotation_app.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from db.annotation import (
    annotate_url,
    assign_tasks,
    attention_pass_rates,
    authenticate,
    campaign_progress,
    choice_to_screen,
    create_annotator,
    hash_token,
    list_annotators,
    load_task,
    log_open,
    next_assignment,
    previous_entry,
    progress,
    queue,
    reset_token,
    screen_to_choice,
    set_excluded,
    skip,
    submit,
)
from db.schema import Annotator, Assignment, Campaign, Context, Event, Judgment, Response, System
from db.schema import Task as TaskRow
from db.session import get_engine, get_or_create, init_db, session_scope
from tests.test_db import db_url, postgres_server  # noqa: F401 (fixtures)

CRITERIA = [
    {
        "name": "fluency",
        "kind": "rating",
        "scale": [1, 5],
        "labels": {"1": "Unreadable", "3": "Some errors", "5": "Perfectly fluent"},
        "rubric": "Is the response well written, whatever it recommends?",
    },
    {
        "name": "relevance",
        "kind": "rating",
        "scale": [0, 2],
        "labels": {"0": "Off topic", "1": "Partly fits", "2": "Fits the request"},
        "rubric": "Do the recommended films fit what the user asked for?",
    },
    {
        "name": "overall",
        "kind": "pairwise",
        "scale": ["A", "B", "tie"],
        "labels": {"A": "A is better", "B": "B is better", "tie": "About the same"},
        "rubric": "Which response helps the user more?",
    },
]
GOOD = {"fluency": 4, "relevance": 2}


def build_campaign(
    engine: Engine,
    name: str = "study",
    *,
    ratings: int = 2,
    pairs: int = 2,
    gold: int = 0,
    overlap: int = 1,
    policy: str = "round-robin",
    settings: dict | None = None,
) -> int:
    """A campaign with ``ratings`` rating tasks, then ``pairs`` pairwise ones, then ``gold``
    pairwise attention checks whose answer is A; returns its id. Queues keep the task order
    unless ``settings`` asks for ``randomize_order``. Texts are unique per task:
    "context {i}" and "reply {i}A" / "reply {i}B", so a test can look for them on screen.
    """
    with session_scope(engine) as session:
        campaign = Campaign(
            name=name,
            criteria=CRITERIA,
            task_kinds=["rating", "pairwise"],
            overlap=overlap,
            assignment_policy=policy,
            guidelines="# How to judge\nRead the whole dialogue first.",
            settings={"randomize_order": False, **(settings or {})},
        )
        session.add(campaign)
        systems = [get_or_create(session, System, name=n, version="1")[0] for n in ("good", "bad")]
        session.flush()
        kinds = ["rating"] * ratings + ["pairwise"] * (pairs + gold)
        for i, kind in enumerate(kinds):
            turns = [
                {"role": "user", "text": f"context {name} {i}: any crime films?", "items": []},
                {"role": "system", "text": "Do you like heists?", "items": []},
                {"role": "user", "text": "Yes, like Heat.", "items": ["1"]},
            ]
            context = Context(
                source=name, external_id=str(i), dialogue={"id": str(i), "turns": turns}
            )
            session.add(context)
            session.flush()
            replies = [
                Response(
                    context=context,
                    system=system,
                    text=f"reply {name} {i}{side}",
                    items=[{"item_id": "3", "score": 1.0, "title": "The Usual Suspects"}],
                )
                for system, side in zip(systems, "AB", strict=True)
            ]
            session.add_all(replies)
            session.flush()
            is_gold = i >= ratings + pairs
            session.add(
                TaskRow(
                    campaign_id=campaign.id,
                    kind=kind,
                    context_id=context.id,
                    response_a_id=replies[0].id,
                    response_b_id=replies[1].id if kind == "pairwise" else None,
                    gold={"overall": "A"} if is_gold else None,
                    position=i,
                )
            )
        return campaign.id


@pytest.fixture
def engine(db_url: str) -> Engine:  # noqa: F811 (the imported fixture)
    """An empty, migrated database: SQLite, then PostgreSQL (skipped when it is not installed)."""
    return init_db(db_url)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'annotation.sqlite'}"
    yield init_db(url)
    get_engine(url).dispose()


def _assignments(engine: Engine) -> list[Assignment]:
    with session_scope(engine, write=False) as session:
        # In task order: one run inserts a whole annotator's batch at a time.
        query = select(Assignment).order_by(Assignment.task_id, Assignment.id)
        return list(session.scalars(query))


def _count(engine: Engine, model: type) -> int:
    with session_scope(engine, write=False) as session:
        return session.scalar(select(func.count()).select_from(model))


# --- access -------------------------------------------------------------------------------------


def test_tokens_open_only_their_own_annotator(engine: Engine) -> None:
    alice, token = create_annotator(engine, "alice")
    bob, _ = create_annotator(engine, "bob", role="admin")
    with session_scope(engine, write=False) as session:
        stored = session.get_one(Annotator, alice.id)
    assert stored.token_hash == hash_token(token) and token not in stored.token_hash
    assert authenticate(engine, token).name == "alice"
    assert authenticate(engine, token + "x") is None
    assert authenticate(engine, "") is None and authenticate(engine, None) is None
    assert [a.role for a in list_annotators(engine)] == ["annotator", "admin"]

    new_token = reset_token(engine, "alice")
    assert authenticate(engine, token) is None
    assert authenticate(engine, new_token).id == alice.id

    with pytest.raises(ValueError, match="'alice' exists"):
        create_annotator(engine, "alice")
    with pytest.raises(ValueError, match="`role`.*annotator, admin"):
        create_annotator(engine, "carol", role="boss")
    with pytest.raises(LookupError, match="alice, bob"):
        set_excluded(engine, "nobody", True)


def test_personal_links_use_the_given_or_configured_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CRS_ANNOTATE_URL", raising=False)
    assert annotate_url("a-b_c") == "http://localhost:8501/?token=a-b_c"
    monkeypatch.setenv("CRS_ANNOTATE_URL", "https://example.org/annotate/")
    assert annotate_url("t") == "https://example.org/annotate/?token=t"
    assert annotate_url("t", "http://host:9000") == "http://host:9000/?token=t"


# --- assignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["round-robin", "random", "least-done"])
def test_each_task_goes_to_overlap_annotators_and_reruns_only_top_up(
    engine: Engine, policy: str
) -> None:
    campaign = build_campaign(engine, ratings=3, pairs=3, overlap=2, policy=policy)
    for name in ("ann1", "ann2", "ann3"):
        create_annotator(engine, name)
    create_annotator(engine, "boss", role="admin")  # admins are not in the default pool

    assert assign_tasks(engine, campaign) == 12
    assert assign_tasks(engine, campaign) == 0
    rows = _assignments(engine)
    per_task = Counter(a.task_id for a in rows)
    assert set(per_task.values()) == {2}
    assert len({(a.task_id, a.annotator_id) for a in rows}) == len(rows)
    per_annotator = Counter(a.annotator_id for a in rows)
    assert len(per_annotator) == 3
    if policy != "random":
        assert set(per_annotator.values()) == {4}  # balanced

    # Top-up: a new task and a new annotator add only the new task's two assignments.
    build_campaign(engine, "other")  # tasks of another campaign are not touched
    with session_scope(engine) as session:
        first = session.scalars(select(TaskRow).where(TaskRow.campaign_id == campaign)).first()
        other_reply = session.scalars(
            select(Response.id).where(
                Response.context_id == first.context_id, Response.id != first.response_a_id
            )
        ).one()
        session.add(
            TaskRow(
                campaign_id=campaign,
                kind="rating",
                context_id=first.context_id,
                response_a_id=other_reply,
                position=99,
            )
        )
    create_annotator(engine, "ann4")
    assert assign_tasks(engine, campaign) == 2
    assert assign_tasks(engine, "study") == 0


def test_round_robin_takes_turns_in_id_order(engine: Engine) -> None:
    campaign = build_campaign(engine, ratings=4, pairs=0)
    ids = [create_annotator(engine, n)[0].id for n in ("a", "b", "c")]
    assign_tasks(engine, campaign)
    assert [a.annotator_id for a in _assignments(engine)] == [ids[0], ids[1], ids[2], ids[0]]


def test_gold_tasks_go_to_every_annotator(engine: Engine) -> None:
    campaign = build_campaign(engine, ratings=2, pairs=2, gold=2, overlap=1)
    for name in ("ann1", "ann2", "ann3"):
        create_annotator(engine, name)
    assert assign_tasks(engine, campaign) == 4 + 2 * 3
    create_annotator(engine, "late")
    assert assign_tasks(engine, campaign) == 2  # the newcomer gets the checks, nothing else
    with session_scope(engine, write=False) as session:
        gold = {t.id for t in session.scalars(select(TaskRow)) if t.gold is not None}
    assert Counter(a.task_id for a in _assignments(engine) if a.task_id in gold) == {
        task: 4 for task in gold
    }


def test_sides_are_drawn_per_annotator_and_task_and_reproducible(
    engine: Engine, tmp_path: Path
) -> None:
    campaign = build_campaign(engine, ratings=2, pairs=20, overlap=4)
    for name in ("a", "b", "c", "d"):
        create_annotator(engine, name)
    assign_tasks(engine, campaign, seed=7)
    rows = _assignments(engine)
    with session_scope(engine, write=False) as session:
        kinds = dict(session.execute(select(TaskRow.id, TaskRow.kind)).all())
    pairwise = [a for a in rows if kinds[a.task_id] == "pairwise"]
    sides = Counter(a.left_is_a for a in pairwise)
    assert sides[True] > 20 and sides[False] > 20  # 80 draws; both sides common
    assert all(a.left_is_a for a in rows if kinds[a.task_id] == "rating")
    # Per task, annotators see different orders (not one draw for everybody).
    by_task = {a.task_id: set() for a in pairwise}
    for a in pairwise:
        by_task[a.task_id].add(a.left_is_a)
    assert any(len(s) == 2 for s in by_task.values())

    # The same seed on a fresh database gives the same sides; another seed does not.
    def draw(seed: int, path: str) -> list[bool]:
        other = init_db(f"sqlite:///{tmp_path / path}")
        build_campaign(other, ratings=2, pairs=20, overlap=4)
        for name in ("a", "b", "c", "d"):
            create_annotator(other, name)
        assign_tasks(other, "study", seed=seed)
        return [a.left_is_a for a in _assignments(other)]

    assert draw(7, "same.sqlite") == [a.left_is_a for a in rows]
    assert draw(8, "other.sqlite") != [a.left_is_a for a in rows]


def test_excluded_annotators_share_is_reassigned(engine: Engine) -> None:
    campaign = build_campaign(engine, ratings=2, pairs=0, overlap=1)
    create_annotator(engine, "a")
    create_annotator(engine, "b")
    assign_tasks(engine, campaign)
    set_excluded(engine, "a", True)
    assert assign_tasks(engine, campaign) == 1  # a's task goes to b
    assert Counter(a.annotator_id for a in _assignments(engine)).most_common(1)[0][1] == 2
    with pytest.raises(ValueError, match="no annotators"):
        assign_tasks(engine, campaign, annotators=[])


# --- queue, answers, edits ----------------------------------------------------------------------


@pytest.fixture
def worker(engine: Engine) -> tuple[int, int]:
    """(campaign id, annotator id): one annotator holding 2 rating then 2 pairwise tasks."""
    campaign = build_campaign(engine)
    annotator, _ = create_annotator(engine, "ann")
    assign_tasks(engine, campaign)
    return campaign, annotator.id


def test_queue_resumes_at_the_first_pending_task(engine: Engine, worker: tuple[int, int]) -> None:
    campaign, me = worker
    entries = queue(engine, me, campaign)
    assert [e.kind for e in entries] == ["rating", "rating", "pairwise", "pairwise"]
    assert [e.number for e in entries] == [1, 2, 3, 4]
    first, second, third, fourth = (e.assignment_id for e in entries)

    assert next_assignment(engine, me, campaign).assignment_id == first
    submit(engine, first, me, GOOD)
    skip(engine, second, me)
    skip(engine, second, me)  # a double click
    assert next_assignment(engine, me, campaign).assignment_id == third
    assert progress(engine, me, campaign) == progress(engine, me, "study")
    assert (progress(engine, me, campaign).done, progress(engine, me, campaign).skipped) == (1, 1)
    assert progress(engine, me, campaign).total == 4

    entries = queue(engine, me, campaign)
    assert previous_entry(entries, third).assignment_id == second
    assert previous_entry(entries, first) is None
    assert previous_entry(entries, None).assignment_id == fourth

    submit(engine, second, me, GOOD)  # a skipped task can still be answered later
    with pytest.raises(ValueError, match="already answered"):
        skip(engine, second, me)
    with session_scope(engine, write=False) as session:
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
    assert kinds == ["submitted", "skipped", "submitted"]


def test_edits_add_revisions_and_double_submits_add_nothing(
    engine: Engine, worker: tuple[int, int]
) -> None:
    campaign, me = worker
    first = next_assignment(engine, me, campaign).assignment_id
    assert submit(engine, first, me, GOOD) == "submitted"
    assert submit(engine, first, me, dict(GOOD)) == "unchanged"
    assert _count(engine, Judgment) == 2

    assert submit(engine, first, me, {"fluency": 2, "relevance": 2}) == "edited"
    with session_scope(engine, write=False) as session:
        rows = session.execute(
            select(Judgment.criterion, Judgment.revision, Judgment.rating).order_by(Judgment.id)
        ).all()
        edit = session.scalars(select(Event).where(Event.kind == "edited")).one()
    assert rows == [("fluency", 0, 4), ("relevance", 0, 2), ("fluency", 1, 2)]
    assert edit.payload["old"] == GOOD and edit.payload["new"] == {"fluency": 2, "relevance": 2}

    view = load_task(engine, first, me)
    assert view.answers == {"fluency": 2, "relevance": 2} and view.status == "done"
    assert view.turns[0]["text"].startswith("context study 0")
    assert view.response_a.item_titles == ["The Usual Suspects"]
    assert [c["name"] for c in view.criteria] == ["fluency", "relevance"]


def test_pairwise_answers_arrive_as_screen_sides_and_are_stored_as_a_b(
    engine: Engine, worker: tuple[int, int]
) -> None:
    campaign, me = worker
    pair = queue(engine, me, campaign)[2].assignment_id
    for left_is_a, side, choice in [
        (True, "left", "A"),
        (True, "right", "B"),
        (False, "left", "B"),
        (False, "right", "A"),
        (False, "tie", "tie"),
    ]:
        assert screen_to_choice(side, left_is_a) == choice
        assert choice_to_screen(choice, left_is_a) == side
    with pytest.raises(ValueError, match="left, right, tie"):
        screen_to_choice("middle", True)

    with session_scope(engine) as session:
        session.get_one(Assignment, pair).left_is_a = False
    view = load_task(engine, pair, me)
    left, right = view.sides()
    assert (left.text, right.text) == ("reply study 2B", "reply study 2A")
    choice = screen_to_choice("left", view.left_is_a)
    submit(engine, pair, me, {"overall": choice}, reason="  names real films  ")
    view = load_task(engine, pair, me)
    assert view.answers == {"overall": "B"} and view.reason == "names real films"
    # Changing only the reason is an edit too.
    assert submit(engine, pair, me, {"overall": "B"}, reason="better films") == "edited"


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            {"fluency": 4, "relevance": 2, "humour": 1},
            "unknown criterion 'humour'.*fluency, relevance",
        ),
        ({"fluency": 4}, "'relevance' has no answer; choose one of 0, 1, 2"),
        ({"fluency": 4, "relevance": None}, "'relevance' has no answer"),
        ({"fluency": 6, "relevance": 2}, "'fluency': 6 is not on its scale; use 1, 2, 3, 4, 5"),
        ({"fluency": "4", "relevance": 2}, "'fluency': '4' is not a rating"),
        ({"fluency": True, "relevance": 2}, "'fluency': True is not a rating"),
        ({"fluency": 4, "relevance": 2, "overall": "A"}, "unknown criterion 'overall'"),
    ],
)
def test_invalid_answers_name_the_criterion_and_the_allowed_values(
    engine: Engine, worker: tuple[int, int], answers: dict, message: str
) -> None:
    campaign, me = worker
    first = next_assignment(engine, me, campaign).assignment_id
    with pytest.raises(ValueError, match=message):
        submit(engine, first, me, answers)
    assert _count(engine, Judgment) == 0
    pair = queue(engine, me, campaign)[2].assignment_id
    with pytest.raises(ValueError, match="'overall': 'left' is not on its scale; use A, B, tie"):
        submit(engine, pair, me, {"overall": "left"})


def test_nobody_answers_someone_elses_assignment(engine: Engine, worker: tuple[int, int]) -> None:
    campaign, me = worker
    intruder, _ = create_annotator(engine, "intruder")
    mine = next_assignment(engine, me, campaign).assignment_id
    for action in (
        lambda: submit(engine, mine, intruder.id, GOOD),
        lambda: skip(engine, mine, intruder.id),
        lambda: log_open(engine, mine, intruder.id),
        lambda: load_task(engine, mine, intruder.id),
    ):
        with pytest.raises(PermissionError, match="another annotator"):
            action()
    with pytest.raises(LookupError, match="no assignment 999"):
        submit(engine, 999, me, GOOD)
    assert _count(engine, Judgment) == 0 and _count(engine, Event) == 0


def test_open_and_submit_events_give_time_on_task(engine: Engine, worker: tuple[int, int]) -> None:
    campaign, me = worker
    first = next_assignment(engine, me, campaign).assignment_id
    log_open(engine, first, me)
    submit(engine, first, me, GOOD)
    with session_scope(engine, write=False) as session:
        events = session.scalars(select(Event).where(Event.assignment_id == first)).all()
    assert [e.kind for e in events] == ["opened", "submitted"]
    assert events[1].at >= events[0].at


# --- quality and admin --------------------------------------------------------------------------


def test_attention_pass_rates_and_progress(engine: Engine) -> None:
    campaign = build_campaign(engine, ratings=1, pairs=0, gold=2)
    careful, _ = create_annotator(engine, "careful")
    sloppy, _ = create_annotator(engine, "sloppy")
    create_annotator(engine, "idle")
    assign_tasks(engine, campaign)
    for annotator, answers in ((careful, ["A", "A"]), (sloppy, ["B", "A"])):
        checks = [e for e in queue(engine, annotator.id, campaign) if e.kind == "pairwise"]
        for entry, choice in zip(checks, answers, strict=True):
            submit(engine, entry.assignment_id, annotator.id, {"overall": choice})
    # An edit counts: sloppy fixes the first check, then gets it wrong again (latest wins).
    first_check = next(e for e in queue(engine, sloppy.id, campaign) if e.kind == "pairwise")
    submit(engine, first_check.assignment_id, sloppy.id, {"overall": "A"})
    submit(engine, first_check.assignment_id, sloppy.id, {"overall": "tie"})

    assert attention_pass_rates(engine, campaign) == {
        "careful": (2, 2),
        "sloppy": (1, 2),
        "idle": (0, 0),
    }
    set_excluded(engine, "sloppy", True)
    rows = {p.name: p for p in campaign_progress(engine, "study")}
    assert rows["sloppy"].excluded and not rows["careful"].excluded
    assert (rows["careful"].progress.done, rows["careful"].progress.pending) == (2, 1)
    assert rows["idle"].progress.total == 2  # the rating task went to careful (round-robin)


# --- concurrency --------------------------------------------------------------------------------


def test_twenty_concurrent_writers_lose_and_duplicate_nothing(sqlite_engine: Engine) -> None:
    """20 threads (as Streamlit serves sessions) for 10 annotators, each annotator's queue
    submitted twice at once, in opposite orders: every submit lands exactly once."""
    engine = sqlite_engine
    campaign = build_campaign(engine, ratings=10, pairs=0, overlap=10)
    annotators = [create_annotator(engine, f"ann{i}")[0].id for i in range(10)]
    assign_tasks(engine, campaign)
    queues = {a: [e.assignment_id for e in queue(engine, a, campaign)] for a in annotators}
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        annotator = annotators[thread % 10]
        order = queues[annotator] if thread < 10 else queues[annotator][::-1]
        barrier.wait()
        try:
            for assignment in order:
                answers = {"fluency": 1 + assignment % 5, "relevance": assignment % 3}
                submit(engine, assignment, annotator, answers)
        except BaseException as error:  # collected: an exception in a thread is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with session_scope(engine, write=False) as session:
        judgments = session.execute(
            select(Judgment.assignment_id, Judgment.criterion, Judgment.revision, Judgment.rating)
        ).all()
        statuses = set(session.scalars(select(Assignment.status)))
        submitted = session.scalar(select(func.count()).where(Event.kind == "submitted"))
    assert len(judgments) == 100 * 2
    assert {revision for _, _, revision, _ in judgments} == {0}
    assert all(
        rating == (1 + a % 5 if criterion == "fluency" else a % 3)
        for a, criterion, _, rating in judgments
    )
    assert statuses == {"done"} and submitted == 100
