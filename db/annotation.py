"""The annotator side of human evaluation: links, assignment, the task queue, answers, checks.

Everything a person does in the annotation app goes through these functions, so the Streamlit
pages stay thin and the rules live in one tested place:

* **Access** — ``create_annotator`` returns a personal token once; only its sha256 is stored and
  ``authenticate`` looks that hash up.
* **Assignment** — ``assign_tasks`` gives every task to ``Campaign.overlap`` annotators (gold
  tasks to everyone) and draws, per annotator and task, the side response A is shown on.
* **Queue** — ``queue``, ``next_assignment``, ``progress``: where an annotator stands is read
  from the database, so reopening the link resumes at the first pending task.
* **Answers** — ``submit`` validates against the campaign's criteria and writes ``Judgment``s;
  an edit adds a revision, the identical answer adds nothing. ``skip`` and ``log_open`` log the
  ``Event``s from which time on task is derived.
* **Quality** — ``attention_pass_rates`` and ``set_excluded``.

Each write is one ``session_scope`` transaction, so concurrent annotators queue on SQLite's write
lock instead of failing (see ``db.session``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload

from backend.settings import get_settings
from db.campaigns import (
    NOT_APPLICABLE,
    campaign_setting,
    criteria_for,
    find_campaign,
    pass_required,
)
from db.schema import Annotator, Assignment, Campaign, Event, Judgment, Response, Task, TaskImport
from db.session import find_by_ref, get_engine, session_scope

log = logging.getLogger(__name__)

ROLES = ("annotator", "admin")
SCREEN_SIDES = ("left", "right", "tie")
# A rating (an integer on the criterion's scale) or a pairwise choice "A" / "B" / "tie".
Answer = int | str
SubmitOutcome = Literal["submitted", "edited", "unchanged"]


# --- access -----------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in ``Annotator.token_hash``."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_annotator(
    engine: Engine | None, name: str, role: str = "annotator"
) -> tuple[Annotator, str]:
    """Create annotator ``name`` and return it with their access token, which is shown only once.

    The token goes into their personal link (``?token=...``); the database keeps its hash only.
    """
    name = name.strip()
    if not name:
        raise ValueError("`name` is empty; give the annotator a name (e.g. a pseudonym)")
    if role not in ROLES:
        raise ValueError(f"`role` is {role!r}; use one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(24)
    with session_scope(engine) as session:
        if session.scalars(select(Annotator).where(Annotator.name == name)).first():
            raise ValueError(
                f"an annotator named {name!r} exists; pick another name, or give them a new "
                "link with reset_token"
            )
        annotator = Annotator(name=name, role=role, token_hash=hash_token(token))
        session.add(annotator)
    log.info("created %s %r", role, name)
    return annotator, token


def annotate_url(token: str, base_url: str | None = None) -> str:
    """The personal link for ``token``: ``base_url`` (default ``CRS_ANNOTATE_URL``) + ``?token=``."""
    base = base_url or get_settings().CRS_ANNOTATE_URL
    return f"{base.rstrip('/')}/?{urlencode({'token': token})}"


def reset_token(engine: Engine | None, annotator: str | int) -> str:
    """A new token for ``annotator`` (name or id); their old link stops working."""
    token = secrets.token_urlsafe(24)
    with session_scope(engine) as session:
        _annotator(session, annotator).token_hash = hash_token(token)
    return token


def authenticate(engine: Engine | None, token: str | None) -> Annotator | None:
    """The annotator whose token this is, or None for a missing or unknown token."""
    if not token:
        return None
    with session_scope(engine, write=False) as session:
        query = select(Annotator).where(Annotator.token_hash == hash_token(token))
        return session.scalars(query).one_or_none()


def list_annotators(engine: Engine | None) -> list[Annotator]:
    """Every annotator and admin, in the order they were created."""
    with session_scope(engine, write=False) as session:
        return list(session.scalars(select(Annotator).order_by(Annotator.id)))


def set_excluded(engine: Engine | None, annotator: str | int, excluded: bool) -> None:
    """Mark ``annotator`` (name or id) as excluded from analyses, or include them again.

    Their judgments stay; the change is logged as an "excluded" event.
    """
    with session_scope(engine) as session:
        row = _annotator(session, annotator)
        if row.excluded != excluded:
            row.excluded = excluded
            session.add(Event(annotator_id=row.id, kind="excluded", payload={"excluded": excluded}))
    log.info("annotator %s excluded=%s", annotator, excluded)


def _annotator(session: Session, ref: str | int) -> Annotator:
    return find_by_ref(session, Annotator, ref, "annotator")


# --- campaigns and criteria -------------------------------------------------------------------


def scale_values(criterion: Mapping[str, Any]) -> list[Answer]:
    """The allowed answers: every integer from min to max for a rating, else the listed choices."""
    scale = criterion["scale"]
    if criterion["kind"] == "rating":
        low, high = scale
        return list(range(int(low), int(high) + 1))
    return list(scale)


def scale_label(criterion: Mapping[str, Any], value: Answer) -> str:
    """The label text of one scale point ("" when the campaign gives none).

    Labels come from JSON, whose keys are strings, so rating 4 is looked up as "4".
    """
    return str(criterion.get("labels", {}).get(str(value), ""))


def _validate(
    criteria: Sequence[Mapping[str, Any]],
    answers: Mapping[str, Any],
    where: str,
) -> dict[str, Answer]:
    """The answers checked against ``criteria``: on the scale, "n/a" where allowed, optional
    criteria (``required: false``) may be left out (None)."""
    by_name = {c["name"]: c for c in criteria}
    for name in answers:
        if name not in by_name:
            raise ValueError(
                f"unknown criterion {name!r} for {where}; its criteria are: {', '.join(by_name)}"
            )
    valid: dict[str, Answer] = {}
    for name, criterion in by_name.items():
        allowed = scale_values(criterion)
        if criterion.get("allow_na"):
            allowed = [*allowed, NOT_APPLICABLE]
        choices = ", ".join(map(str, allowed))
        value = answers.get(name)
        if value is None:
            if criterion.get("required", True):
                raise ValueError(f"criterion {name!r} has no answer; choose one of {choices}")
            continue
        if criterion["kind"] == "rating" and value != NOT_APPLICABLE:
            # bool is an Integral too, and True == 1 would pass the range check.
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ValueError(f"criterion {name!r}: {value!r} is not a rating; use {choices}")
            value = int(value)
        if value not in allowed:
            raise ValueError(f"criterion {name!r}: {value!r} is not on its scale; use {choices}")
        valid[name] = value
    return valid


# --- assignment -------------------------------------------------------------------------------


def assign_tasks(
    engine: Engine | None,
    campaign: str | int,
    annotators: Iterable[str | int] | None = None,
    seed: int | None = None,
    limit: int | None = None,
) -> int:
    """Give every task of ``campaign`` to ``overlap`` annotators; return how many were added.

    ``annotators`` (names or ids) defaults to every non-excluded annotator with role "annotator".
    Idempotent: a re-run adds only what is missing, so it tops up new tasks and new annotators.
    Assignments of excluded annotators do not count towards the overlap, so a re-run after
    ``set_excluded`` replaces their share. Gold tasks (attention checks and onboarding) go to
    everyone; tasks of an import still running are left for a later run, and annotators who
    failed the campaign's onboarding get nothing more. ``limit`` caps the
    regular tasks each annotator gets in this run (a crowd worker's batch).

    Who gets a task follows ``Campaign.assignment_policy``:

    * ``round-robin`` — annotators in id order, in turn, continuing where the last run stopped;
    * ``random`` — a random draw (reproducible from ``seed``) among those not on the task yet;
    * ``least-done`` — those with the fewest finished tasks in the campaign first, then the
      fewest assigned, so newcomers catch up.

    Each annotator's new tasks are queued in an order of their own (``Assignment.queue_order``):
    a shuffle seeded by ``seed`` (default the campaign's), the annotator and the run, with tasks
    of one context kept apart; campaigns with ``randomize_order: false`` keep the task order and
    only place attention checks at random. For pairwise tasks, the side response A is shown on
    is drawn from ``seed``, the campaign, the task and the annotator, so it does not depend on the
    order of runs. The plan is read in one snapshot and written in short chunks.
    """
    engine = engine or get_engine()
    with session_scope(engine, write=False) as session:
        target = find_campaign(session, campaign)
        seed = campaign_setting(target, "seed", 0) if seed is None else seed
        disqualified = {
            annotator_id
            for annotator_id, payload in session.execute(
                select(Event.annotator_id, Event.payload).where(Event.kind == "disqualified")
            )
            if payload.get("campaign_id") == target.id
        }
        pool = [a for a in _pool(session, target, annotators) if a.id not in disqualified]
        finished = select(TaskImport.id).where(TaskImport.status == "done")
        tasks = list(
            session.scalars(
                select(Task)
                .where(
                    Task.campaign_id == target.id,
                    or_(Task.import_id.is_(None), Task.import_id.in_(finished)),
                )
                .order_by(Task.position, Task.id)
            )
        )
        _check_onboarding(target, tasks)
        existing = session.execute(
            select(
                Assignment.task_id,
                Assignment.annotator_id,
                Assignment.status,
                Assignment.queue_order,
                Annotator.excluded,
            )
            .join(Task, Task.id == Assignment.task_id)
            .join(Annotator, Annotator.id == Assignment.annotator_id)
            .where(Task.campaign_id == target.id)
        ).all()
    gold_ids = {t.id for t in tasks if t.gold or t.stage == "onboarding"}
    holders: dict[int, set[int]] = {}
    counting: dict[int, int] = {}  # per task: the assignments that count towards the overlap
    assigned = {a.id: 0 for a in pool}
    done = {a.id: 0 for a in pool}
    last_order = {a.id: -1 for a in pool}
    regular_given = 0
    for task_id, annotator_id, status, order, excluded in existing:
        holders.setdefault(task_id, set()).add(annotator_id)
        counting[task_id] = counting.get(task_id, 0) + (not excluded)
        if annotator_id in assigned:
            assigned[annotator_id] += 1
            done[annotator_id] += status == "done"
            last_order[annotator_id] = max(last_order[annotator_id], order)
        regular_given += task_id not in gold_ids

    order = [a.id for a in pool]
    rotation = _Rotation(order, start=regular_given)
    new: dict[int, list[Task]] = {a: [] for a in order}
    regular_new = dict.fromkeys(order, 0)  # this run's non-gold tasks per annotator, for `limit`
    for task in tasks:
        have = holders.get(task.id, set())
        candidates = [a for a in order if a not in have]
        if task.id in gold_ids:
            chosen = candidates
        else:
            if limit is not None:
                candidates = [a for a in candidates if regular_new[a] < limit]
            need = min(len(candidates), max(0, target.overlap - counting.get(task.id, 0)))
            if target.assignment_policy == "random":
                chosen = random.Random(f"{seed}:{target.id}:{task.id}").sample(candidates, need)
            elif target.assignment_policy == "least-done":
                chosen = sorted(candidates, key=lambda a: (done[a], assigned[a], a))[:need]
            else:
                chosen = rotation.take(have | (set(order) - set(candidates)), need)
        for annotator_id in chosen:
            new[annotator_id].append(task)
            assigned[annotator_id] += 1
            regular_new[annotator_id] += task.id not in gold_ids

    rows = []
    shuffled = campaign_setting(target, "randomize_order", True)
    for annotator_id, batch in new.items():
        rng = random.Random(f"{seed}:{target.id}:{annotator_id}:{last_order[annotator_id]}")
        queued = _queue_order(batch, gold_ids, rng, shuffled)
        rows += [
            {
                "task_id": task.id,
                "annotator_id": annotator_id,
                "left_is_a": _left_is_a(seed, target.id, task, annotator_id),
                "queue_order": last_order[annotator_id] + 1 + k,
            }
            for k, task in enumerate(queued)
        ]
    added = _insert_assignments(engine, rows)
    log.info("campaign %r: %d new assignments", target.name, added)
    return added


def _check_onboarding(target: Campaign, tasks: Sequence[Task]) -> None:
    """Refuse to hand out a campaign whose qualification cannot be passed."""
    needed = pass_required(target)
    have = sum(t.stage == "onboarding" for t in tasks)
    if needed > have:
        raise ValueError(
            f"campaign {target.name!r} requires passing {needed} onboarding task(s) but has "
            f"{have}; import rows with stage 'onboarding' and a gold answer first"
        )


def _queue_order(
    tasks: list[Task], gold_ids: set[int], rng: random.Random, shuffled: bool
) -> list[Task]:
    """One annotator's new tasks in the order they will see them (onboarding is queued apart).

    Shuffled: a seeded permutation, then tasks of the same context are pulled apart where another
    task can go between them. Not shuffled: task order, with attention checks at random places.
    """
    onboarding = [t for t in tasks if t.stage == "onboarding"]
    rest = [t for t in tasks if t.stage != "onboarding"]
    if shuffled:
        rng.shuffle(rest)
        spread: list[Task] = []
        while rest:
            last_context = spread[-1].context_id if spread else None
            pick = next((t for t in rest if t.context_id != last_context), rest[0])
            rest.remove(pick)
            spread.append(pick)
        return onboarding + spread
    ordered = [t for t in rest if t.id not in gold_ids]
    for check in (t for t in rest if t.id in gold_ids):
        ordered.insert(rng.randint(0, len(ordered)), check)
    return onboarding + ordered


def _insert_assignments(engine: Engine, rows: list[dict[str, Any]], chunk: int = 200) -> int:
    """Insert ``rows`` a chunk per transaction, skipping any another run inserted meanwhile."""
    added = 0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        with session_scope(engine) as session:
            taken = set(
                session.execute(
                    select(Assignment.task_id, Assignment.annotator_id).where(
                        Assignment.task_id.in_({r["task_id"] for r in part}),
                        Assignment.annotator_id.in_({r["annotator_id"] for r in part}),
                    )
                ).all()
            )
            fresh = [r for r in part if (r["task_id"], r["annotator_id"]) not in taken]
            session.add_all(Assignment(**r) for r in fresh)
            added += len(fresh)
    return added


def _pool(
    session: Session, target: Campaign, annotators: Iterable[str | int] | None
) -> list[Annotator]:
    """The annotators to assign to, in id order."""
    if annotators is None:
        query = select(Annotator).where(
            Annotator.role == "annotator", Annotator.excluded.is_(False)
        )
        pool = list(session.scalars(query.order_by(Annotator.id)))
    else:
        by_id = {row.id: row for row in (_annotator(session, ref) for ref in annotators)}
        pool = sorted(by_id.values(), key=lambda a: a.id)
    if not pool:
        raise ValueError(
            f"no annotators to assign campaign {target.name!r} to; create some first "
            "(create_annotator, or the admin page of the annotation app)"
        )
    if target.overlap > len(pool):
        log.warning(
            "campaign %r wants %d annotators per task but only %d are in the pool; "
            "re-run assign_tasks after adding annotators to top up",
            target.name,
            target.overlap,
            len(pool),
        )
    return pool


class _Rotation:
    """The round-robin policy: annotators in turn, skipping those already on the task."""

    def __init__(self, order: list[int], start: int) -> None:
        self.order = order
        # Continue where earlier runs stopped: they handed out ``start`` assignments.
        self.cursor = start % len(order)

    def take(self, exclude: set[int], need: int) -> list[int]:
        chosen: list[int] = []
        while len(chosen) < need:  # need <= annotators not in exclude, so this ends
            annotator_id = self.order[self.cursor]
            self.cursor = (self.cursor + 1) % len(self.order)
            if annotator_id not in exclude and annotator_id not in chosen:
                chosen.append(annotator_id)
        return chosen


def _left_is_a(seed: int, campaign_id: int, task: Task, annotator_id: int) -> bool:
    if task.kind != "pairwise":
        return True  # one response, no sides
    # A string seed hashes the same in every process (unlike hash() of a tuple).
    return random.Random(f"{seed}:{campaign_id}:{task.id}:{annotator_id}").random() < 0.5


# --- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    """One of an annotator's assignments, as listed in their queue."""

    assignment_id: int
    task_id: int
    kind: str
    status: str
    number: int  # 1-based place in the queue, as shown to the annotator
    stage: str = "main"  # "onboarding": qualification, before the real tasks


@dataclass(frozen=True)
class Progress:
    done: int
    skipped: int
    pending: int

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.pending


def annotator_campaigns(engine: Engine | None, annotator_id: int) -> list[Campaign]:
    """The campaigns in which ``annotator_id`` has assignments, oldest first."""
    query = (
        select(Campaign)
        .where(
            Campaign.id.in_(
                select(Task.campaign_id)
                .join(Assignment, Assignment.task_id == Task.id)
                .where(Assignment.annotator_id == annotator_id)
            )
        )
        .order_by(Campaign.id)
    )
    with session_scope(engine, write=False) as session:
        return list(session.scalars(query))


def queue(engine: Engine | None, annotator_id: int, campaign: str | int) -> list[QueueEntry]:
    """``annotator_id``'s assignments in ``campaign``, in task order, with their status."""
    with session_scope(engine, write=False) as session:
        target = find_campaign(session, campaign)
        rows = session.execute(
            select(Assignment.id, Task.id, Task.kind, Assignment.status, Task.stage)
            .join(Task, Task.id == Assignment.task_id)
            .where(Task.campaign_id == target.id, Assignment.annotator_id == annotator_id)
            .order_by(Task.stage != "onboarding", Assignment.queue_order, Task.position, Task.id)
        ).all()
    return [
        QueueEntry(a, t, k, status, number, stage)
        for number, (a, t, k, status, stage) in enumerate(rows, start=1)
    ]


def next_assignment(
    engine: Engine | None, annotator_id: int, campaign: str | int
) -> QueueEntry | None:
    """The first pending assignment, where the annotator resumes; None when nothing is pending."""
    return next((e for e in queue(engine, annotator_id, campaign) if e.status == "pending"), None)


def previous_entry(entries: Sequence[QueueEntry], assignment_id: int | None) -> QueueEntry | None:
    """The entry before ``assignment_id`` (the last one when None: back from "all done")."""
    if assignment_id is None:
        return entries[-1] if entries else None
    ids = [e.assignment_id for e in entries]
    index = ids.index(assignment_id)
    return entries[index - 1] if index > 0 else None


def progress(engine: Engine | None, annotator_id: int, campaign: str | int) -> Progress:
    """How many of ``annotator_id``'s tasks in ``campaign`` are done, skipped and pending."""
    return progress_of(queue(engine, annotator_id, campaign))


def progress_of(entries: Iterable[QueueEntry]) -> Progress:
    """The counts of a queue already loaded."""
    counts = {"done": 0, "skipped": 0, "pending": 0}
    for entry in entries:
        counts[entry.status] += 1
    return Progress(**counts)


# --- one task as the annotator sees it --------------------------------------------------------


@dataclass(frozen=True)
class ShownResponse:
    text: str
    item_titles: list[str]


@dataclass(frozen=True)
class TaskView:
    """Everything the app shows for one assignment, and the annotator's latest answers."""

    assignment_id: int
    kind: str
    status: str
    left_is_a: bool
    campaign: str
    turns: list[dict[str, Any]]  # backend.types.Turn dumps: role, text, items
    response_a: ShownResponse
    response_b: ShownResponse | None
    criteria: list[dict[str, Any]]
    answers: dict[str, Answer]  # latest revision per criterion, in A/B terms
    reason: str | None
    stage: str = "main"
    # An answered onboarding task: how the first answer compares with the gold one.
    result: OnboardingResult | None = None

    def sides(self) -> tuple[ShownResponse, ShownResponse]:
        """The two responses in screen order (left, right) for a pairwise task."""
        if self.response_b is None:
            raise ValueError(f"assignment {self.assignment_id} is a rating task; it has no sides")
        if self.left_is_a:
            return self.response_a, self.response_b
        return self.response_b, self.response_a


def _shown(response: Response) -> ShownResponse:
    # Stored replies carry titles when the system knew them; otherwise show the item id.
    titles = [item.get("title") or f"item {item.get('item_id', '?')}" for item in response.items]
    return ShownResponse(text=response.text, item_titles=titles)


def load_task(engine: Engine | None, assignment_id: int, annotator_id: int) -> TaskView:
    """The task behind ``assignment_id``, as ``annotator_id`` (who must hold it) sees it."""
    with session_scope(engine, write=False) as session:
        assignment = _assignment(session, assignment_id, annotator_id)
        task = assignment.task
        latest = _latest(session, assignment.id)
        reason = next((j.reason for j in latest.values() if j.reason), None)
        return TaskView(
            assignment_id=assignment.id,
            kind=task.kind,
            status=assignment.status,
            left_is_a=assignment.left_is_a,
            campaign=task.campaign.name,
            turns=list(task.context.dialogue.get("turns", [])),
            response_a=_shown(task.response_a),
            response_b=_shown(task.response_b) if task.response_b is not None else None,
            criteria=criteria_for(task.campaign, task.kind),
            answers={name: _answer(j) for name, j in latest.items()},
            reason=reason,
            stage=task.stage,
            result=_onboarding_result(session, assignment) if assignment.status == "done" else None,
        )


def _assignment(session: Session, assignment_id: int, annotator_id: int) -> Assignment:
    """The assignment with its task and campaign loaded (one query), if ``annotator_id`` holds it."""
    query = (
        select(Assignment)
        .options(joinedload(Assignment.task).joinedload(Task.campaign))
        .where(Assignment.id == assignment_id)
    )
    assignment = session.scalars(query).one_or_none()
    if assignment is None:
        raise LookupError(f"no assignment {assignment_id}; reload the task list")
    if assignment.annotator_id != annotator_id:
        raise PermissionError(
            f"assignment {assignment_id} belongs to another annotator; "
            f"annotator {annotator_id} can only answer their own tasks"
        )
    return assignment


def _latest(session: Session, assignment_id: int) -> dict[str, Judgment]:
    """The highest revision per criterion."""
    rows = session.scalars(
        select(Judgment).where(Judgment.assignment_id == assignment_id).order_by(Judgment.revision)
    )
    return {j.criterion: j for j in rows}


def _answer(judgment: Judgment) -> Answer:
    if judgment.rating is not None:
        return judgment.rating
    return str(judgment.choice)


# --- onboarding (qualification) -------------------------------------------------------------


@dataclass(frozen=True)
class OnboardingResult:
    """An answered onboarding task: right or wrong, what was expected, and the explanation."""

    correct: bool
    expected: dict[str, Answer]  # gold answers, pairwise ones in A/B terms
    given: dict[str, Answer]  # the annotator's first answers
    feedback: str


@dataclass(frozen=True)
class Qualification:
    """Where an annotator stands in a campaign's onboarding."""

    required: int  # correct onboarding answers needed; 0 = the campaign has no onboarding
    total: int
    answered: int
    correct: int

    @property
    def state(self) -> Literal["none", "in-progress", "passed", "failed"]:
        if self.required == 0:
            return "none"
        if self.correct + (self.total - self.answered) < self.required:
            return "failed"  # even all remaining right would not be enough
        return "passed" if self.answered == self.total else "in-progress"


def _first_answers(session: Session, assignment_id: int) -> dict[str, Answer]:
    """Revision 0 per criterion: on an onboarding task the first answer is the one that counts."""
    rows = session.scalars(
        select(Judgment).where(Judgment.assignment_id == assignment_id, Judgment.revision == 0)
    )
    return {j.criterion: _answer(j) for j in rows}


def _onboarding_result(session: Session, assignment: Assignment) -> OnboardingResult | None:
    task = assignment.task
    if task.stage != "onboarding" or not task.gold:
        return None
    given = _first_answers(session, assignment.id)
    expected = dict(task.gold)
    correct = all(given.get(name) == value for name, value in expected.items())
    return OnboardingResult(correct, expected, given, task.feedback or "")


def qualification(engine: Engine | None, annotator_id: int, campaign: str | int) -> Qualification:
    """``annotator_id``'s onboarding in ``campaign``: answered and correct of the required."""
    with session_scope(engine, write=False) as session:
        return _qualification(session, find_campaign(session, campaign), annotator_id)


def _qualification(session: Session, campaign: Campaign, annotator_id: int) -> Qualification:
    required = pass_required(campaign)
    assignments = session.scalars(
        select(Assignment)
        .join(Task, Task.id == Assignment.task_id)
        .options(joinedload(Assignment.task))
        .where(
            Task.campaign_id == campaign.id,
            Task.stage == "onboarding",
            Assignment.annotator_id == annotator_id,
        )
    ).all()
    results = [_onboarding_result(session, a) for a in assignments if a.status == "done"]
    correct = sum(bool(r and r.correct) for r in results)
    return Qualification(required, len(assignments), len(results), correct)


def _release_if_failed(engine: Engine | None, annotator_id: int, campaign_id: int) -> None:
    """After a failed qualification, give the annotator's pending real tasks back to the pool."""
    if qualification(engine, annotator_id, campaign_id).state != "failed":
        return
    with session_scope(engine) as session:
        pending = session.scalars(
            select(Assignment)
            .join(Task, Task.id == Assignment.task_id)
            .where(
                Task.campaign_id == campaign_id,
                Task.stage == "main",
                Assignment.annotator_id == annotator_id,
                Assignment.status == "pending",
            )
        ).all()
        for assignment in pending:
            session.delete(assignment)
        session.add(
            Event(
                annotator_id=annotator_id,
                kind="disqualified",
                payload={"campaign_id": campaign_id, "released": len(pending)},
            )
        )
    log.info("annotator %d failed onboarding; %d tasks released", annotator_id, len(pending))


# --- answers ----------------------------------------------------------------------------------


def screen_to_choice(side: str, left_is_a: bool) -> str:
    """A pairwise answer in screen terms ("left" / "right" / "tie") as stored: "A" / "B" / "tie"."""
    if side not in SCREEN_SIDES:
        raise ValueError(
            f"side {side!r} is not a screen side; use one of {', '.join(SCREEN_SIDES)}"
        )
    if side == "tie":
        return "tie"
    return "A" if (side == "left") == left_is_a else "B"


def choice_to_screen(choice: str, left_is_a: bool) -> str:
    """The inverse of ``screen_to_choice``: where the annotator saw the chosen response."""
    if choice == "tie":
        return "tie"
    if choice not in ("A", "B"):
        raise ValueError(f"choice {choice!r} is not a pairwise choice; use A, B or tie")
    return "left" if (choice == "A") == left_is_a else "right"


def submit(
    engine: Engine | None,
    assignment_id: int,
    annotator_id: int,
    answers: Mapping[str, Any],
    reason: str | None = None,
) -> SubmitOutcome:
    """Store ``annotator_id``'s answers to ``assignment_id`` and mark it done.

    ``answers`` maps every criterion of the task's kind to a rating on its scale or, for pairwise
    tasks, "A" / "B" / "tie" naming the task's responses (map screen sides with
    ``screen_to_choice``). A criterion whose answer (or the reason) changed gets a new revision;
    the identical answer adds nothing, so a double submit is harmless. Returns "submitted" for the
    first answer, "edited" for a change (logged with old and new answers) or "unchanged".
    """
    reason = (reason or "").strip() or None
    outcome, stage, campaign_id = _retry_while_busy(
        lambda: _submit(engine, assignment_id, annotator_id, answers, reason)
    )
    if stage == "onboarding" and outcome == "submitted":
        _release_if_failed(engine, annotator_id, campaign_id)
    log.debug("assignment %d %s by annotator %d", assignment_id, outcome, annotator_id)
    return outcome


class DatabaseBusy(RuntimeError):
    """The database stayed locked by other writers for longer than a person should wait."""

    MESSAGE = (
        "The study's database is busy right now, so your answers were not saved yet. "
        "They are still on the page: please press Submit again in a few seconds."
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


T = TypeVar("T")
# On top of SQLite's own busy timeout per attempt: how long a submit keeps trying in all.
SUBMIT_PATIENCE_S = 30.0


def _retry_while_busy(write: Callable[[], T], patience_s: float | None = None) -> T:
    """Run ``write``; on "database is locked" (or a concurrent duplicate) wait and run it again.

    PostgreSQL only raises IntegrityError here when a concurrent submit of the same assignment
    inserted the same revision first; one retry then builds on the winner's rows.
    """
    patience_s = SUBMIT_PATIENCE_S if patience_s is None else patience_s
    deadline = time.monotonic() + patience_s
    delay = 0.05
    lost_race = False
    while True:
        try:
            return write()
        except IntegrityError:
            if lost_race:  # a second time is not a race but a real conflict
                raise
            lost_race = True
            continue
        except OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            if time.monotonic() > deadline:
                log.warning("submit gave up after %.0f s: %s", patience_s, err)
                raise DatabaseBusy() from err
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _submit(
    engine: Engine | None,
    assignment_id: int,
    annotator_id: int,
    answers: Mapping[str, Any],
    reason: str | None,
) -> tuple[SubmitOutcome, str, int]:
    with session_scope(engine) as session:
        assignment = _assignment(session, assignment_id, annotator_id)
        task = assignment.task
        if task.stage == "onboarding" and assignment.status == "done":
            return "unchanged", task.stage, task.campaign_id  # the first answer counts
        if task.stage == "main":
            _require_qualified(session, task.campaign, annotator_id)
        valid = _validate(
            criteria_for(task.campaign, task.kind),
            answers,
            f"a {task.kind} task of campaign {task.campaign.name!r}",
        )
        latest = _latest(session, assignment.id)
        new_rows = [
            Judgment(
                assignment_id=assignment.id,
                criterion=name,
                rating=value if isinstance(value, int) else None,
                choice=None if isinstance(value, int) else value,
                reason=reason,
                revision=0 if name not in latest else latest[name].revision + 1,
            )
            for name, value in valid.items()
            if name not in latest or (_answer(latest[name]), latest[name].reason) != (value, reason)
        ]
        if not new_rows and assignment.status == "done":
            return "unchanged", task.stage, task.campaign_id
        session.add_all(new_rows)
        if latest:
            outcome: SubmitOutcome = "edited"
            payload: dict[str, Any] = {
                "old": {name: _answer(j) for name, j in latest.items()},
                "new": valid,
                "old_reason": next((j.reason for j in latest.values() if j.reason), None),
                "new_reason": reason,
            }
        else:
            outcome, payload = "submitted", {"answers": valid, "reason": reason}
        assignment.status = "done"
        session.add(
            Event(
                annotator_id=annotator_id,
                assignment_id=assignment.id,
                kind=outcome,
                payload=payload,
            )
        )
    return outcome, task.stage, task.campaign_id


def _require_qualified(session: Session, campaign: Campaign, annotator_id: int) -> None:
    """PermissionError unless the annotator passed the campaign's onboarding (if it has one)."""
    if not pass_required(campaign):
        return  # most campaigns: no query inside the submit's write transaction
    status = _qualification(session, campaign, annotator_id)
    if status.state not in ("none", "passed"):
        raise PermissionError(
            f"campaign {campaign.name!r}: pass the onboarding ({status.required} correct) first"
        )


def skip(engine: Engine | None, assignment_id: int, annotator_id: int) -> None:
    """Mark a pending assignment skipped (logged); skipping it again changes nothing."""
    with session_scope(engine) as session:
        assignment = _assignment(session, assignment_id, annotator_id)
        if assignment.status == "done":
            raise ValueError(
                f"assignment {assignment_id} is already answered; submit a new answer to edit it"
            )
        if assignment.status == "skipped":
            return
        if assignment.task.stage == "onboarding":
            raise ValueError("onboarding tasks cannot be skipped; they qualify you for the study")
        assignment.status = "skipped"
        session.add(Event(annotator_id=annotator_id, assignment_id=assignment_id, kind="skipped"))


def log_open(engine: Engine | None, assignment_id: int, annotator_id: int) -> None:
    """Log that ``annotator_id`` opened ``assignment_id`` (time on task = submit - open)."""

    def write() -> None:
        with session_scope(engine) as session:
            _assignment(session, assignment_id, annotator_id)
            session.add(
                Event(annotator_id=annotator_id, assignment_id=assignment_id, kind="opened")
            )

    _retry_while_busy(write, patience_s=5.0)


# --- quality and admin ------------------------------------------------------------------------


def attention_pass_rates(engine: Engine | None, campaign: str | int) -> dict[str, tuple[int, int]]:
    """Per annotator name: (passed, answered) attention checks in ``campaign``.

    A check is a gold task (``Task.gold`` = {criterion: expected answer}); it is passed when the
    latest answer to every criterion in ``gold`` equals the expected one. Unanswered checks are
    not counted; annotators with gold tasks but no answers yet show (0, 0).
    """
    rates: dict[str, tuple[int, int]] = {}
    with session_scope(engine, write=False) as session:
        target = find_campaign(session, campaign)
        rows = session.execute(
            select(Assignment, Task.gold, Annotator.name)
            .join(Task, Task.id == Assignment.task_id)
            .join(Annotator, Annotator.id == Assignment.annotator_id)
            .where(Task.campaign_id == target.id)
            .order_by(Annotator.id, Task.position, Task.id)
        ).all()
        for assignment, gold, name in rows:
            # Filtered here, not in SQL: gold=None may be stored as JSON null, which IS NOT NULL;
            # an empty dict checks nothing either.
            if not gold:
                continue
            passed, total = rates.get(name, (0, 0))
            if assignment.status == "done":
                latest = _latest(session, assignment.id)
                ok = all(
                    criterion in latest and _answer(latest[criterion]) == expected
                    for criterion, expected in gold.items()
                )
                passed, total = passed + ok, total + 1
            rates[name] = (passed, total)
    return rates


@dataclass(frozen=True)
class AnnotatorProgress:
    name: str
    role: str
    excluded: bool
    progress: Progress


def campaign_progress(engine: Engine | None, campaign: str | int) -> list[AnnotatorProgress]:
    """Done / skipped / pending counts for every annotator with assignments in ``campaign``."""
    with session_scope(engine, write=False) as session:
        target = find_campaign(session, campaign)
        rows = session.execute(
            select(Annotator, Assignment.status, func.count())
            .join(Assignment, Assignment.annotator_id == Annotator.id)
            .join(Task, Task.id == Assignment.task_id)
            .where(Task.campaign_id == target.id)
            .group_by(Annotator.id, Assignment.status)
            .order_by(Annotator.id)
        ).all()
    counts: dict[int, dict[str, int]] = {}
    people: dict[int, Annotator] = {}
    for annotator, status, count in rows:
        people[annotator.id] = annotator
        counts.setdefault(annotator.id, {"done": 0, "skipped": 0, "pending": 0})[status] = count
    return [
        AnnotatorProgress(a.name, a.role, a.excluded, Progress(**counts[a.id]))
        for a in people.values()
    ]
