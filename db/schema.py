"""The CRS Arena database: systems and their responses, human-evaluation campaigns, arena votes.

One schema serves two kinds of human judgment so that researchers can analyse them together:

* **Annotation** — a ``Campaign`` holds ``Task``s (rate one ``Response``, or compare two) built
  from ``Context``s (the dialogue shown) and the ``Response``s of ``System``s. Each task is given
  to ``overlap`` ``Annotator``s as ``Assignment``s; an annotator's answers are ``Judgment``s (one
  per criterion, re-submissions add a revision) and everything they do is logged as ``Event``s.
* **Arena** — an ``ArenaVote`` records one side-by-side round of the Gradio demo.

The models are portable across SQLite and PostgreSQL: JSON columns become JSONB on PostgreSQL,
datetimes are timezone-aware UTC on both, and every constraint has a stable name (Alembic needs
names to alter SQLite tables in batch mode). The schema is created by the migrations in
``db/migrations``, never by ``create_all``; change a model, then add a revision.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ArenaOutcome = Literal["A", "B", "tie", "both_bad"]
PairwiseChoice = Literal["A", "B", "tie"]
TaskKind = Literal["rating", "pairwise"]

# JSONB on PostgreSQL: it supports equality (DISTINCT, GROUP BY) and indexing, plain JSON does not.
JSONValue = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime the database accepts)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite stores no offset, so values are converted to UTC on the way in and marked UTC on the way
    out; PostgreSQL stores ``timestamptz``. Naive datetimes are refused because their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} has no time zone; "
                "pass an aware one such as datetime.now(UTC)"
            )
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def content_hash(*parts: Any) -> str:
    """sha256 of ``parts`` as canonical JSON (sorted keys, no whitespace, Unicode kept)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hash_of(*columns: str) -> Any:
    """A column default: the content hash of the row's ``columns`` as inserted."""

    def default(context: Any) -> str:
        values = context.get_current_parameters()
        return content_hash(*(values.get(c) for c in columns))

    return default


def _now_column() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow)


# --- systems, contexts and their responses --------------------------------------------------


class System(Base):
    """A CRS model at one version (a checkpoint, a prompt revision, a git commit...)."""

    __tablename__ = "systems"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")


class Context(Base):
    """A dialogue prefix shown to annotators, from a dataset split or an arena round.

    A context is identified by its source, its id there *and* its content (``content_hash``, see
    ``db.content``): two files that both call their first context "1" get two contexts, so a task
    always shows the text that was imported for it.
    """

    __tablename__ = "contexts"
    __table_args__ = (UniqueConstraint("source", "external_id", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Dataset name ("redial", "inspired", ...) or "arena"; with external_id it names the context.
    source: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(200))
    # sha256 of the dialogue and history as canonical JSON.
    content_hash: Mapped[str] = mapped_column(
        String(64), default=_hash_of("dialogue", "user_history")
    )
    # backend.types.Dialogue.model_dump(mode="json")
    dialogue: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    # backend.types.UserHistory.model_dump(mode="json"), when the system saw one.
    user_history: Mapped[dict[str, Any] | None] = mapped_column(JSONValue, nullable=True)


class Response(Base):
    """What one system answered in one context (a stored ``backend.types.Reply``)."""

    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("context_id", "system_id", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    context_id: Mapped[int] = mapped_column(ForeignKey("contexts.id"))
    system_id: Mapped[int] = mapped_column(ForeignKey("systems.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    # sha256 of text and items: corrected text for the same system is a new response.
    content_hash: Mapped[str] = mapped_column(String(64), default=_hash_of("text", "items"))
    # Ranked backend.types.ScoredItem dumps, best first.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue, default=list)
    # backend.types.TraceStep dumps.
    trace: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue, default=list)
    created_at: Mapped[datetime] = _now_column()

    context: Mapped[Context] = relationship()
    system: Mapped[System] = relationship()


# --- human-evaluation campaigns -------------------------------------------------------------


class Campaign(Base):
    """A human-evaluation study: what is judged (criteria), by how many people, and how.

    ``criteria`` is a list of ``{"name", "kind": "rating"|"pairwise", "scale": [min, max] or
    ["A", "B", "tie"], "labels": {value: label text}, "question", "rubric", "required",
    "allow_na"}`` and ``settings`` the rest of its ``db.campaigns.CampaignSpec`` (onboarding,
    order, minimum time, crowdsourcing completion).
    """

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("overlap >= 1", name="overlap"),
        CheckConstraint(
            "assignment_policy IN ('round-robin', 'random', 'least-done')",
            name="assignment_policy",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # "presales", "llm-redial", "pecrs", "arena" or "custom": which preset the criteria came from.
    template: Mapped[str] = mapped_column(String(50), default="custom")
    criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue, default=list)
    task_kinds: Mapped[list[str]] = mapped_column(JSONValue, default=list)
    # Annotators per task.
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    assignment_policy: Mapped[str] = mapped_column(String(20), default="round-robin")
    guidelines: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    created_at: Mapped[datetime] = _now_column()

    tasks: Mapped[list[Task]] = relationship(back_populates="campaign")


class TaskImport(Base):
    """One import of tasks into a campaign, written in short chunks.

    Its tasks are assigned only once it is ``done``; a failed import deletes its tasks (and the
    campaign when the import created it), so an import is all-or-nothing for annotators without
    holding the database's write lock for its whole length.
    """

    __tablename__ = "task_imports"
    __table_args__ = (CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    created_campaign: Mapped[bool] = mapped_column(Boolean, default=False)
    origin: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="running")
    started_at: Mapped[datetime] = _now_column()


class Annotator(Base):
    """A person with a personal link. Only the sha256 of their access token is stored."""

    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint("role IN ('annotator', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    # A crowd worker's id on their platform, e.g. "prolific:5f1c..."; None for invited people.
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    created_at: Mapped[datetime] = _now_column()
    # Set when an annotator fails attention checks; their judgments stay but analyses drop them.
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)


class Task(Base):
    """One unit of annotation: rate ``response_a``, or compare ``response_a`` with ``response_b``.

    The unique constraint makes re-importing the same tasks a no-op. SQL treats NULLs as distinct,
    so for rating tasks (``response_b_id`` NULL) that guarantee comes from looking up before
    inserting (``db.session.get_or_create``), not from the index.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        # Named by hand: the conventional name is longer than PostgreSQL's 63-character limit.
        UniqueConstraint(
            "campaign_id",
            "kind",
            "context_id",
            "response_a_id",
            "response_b_id",
            name="uq_tasks_content",
        ),
        CheckConstraint("kind IN ('rating', 'pairwise')", name="kind"),
        CheckConstraint("stage IN ('main', 'onboarding')", name="stage"),
        CheckConstraint(
            "(kind = 'rating' AND response_b_id IS NULL)"
            " OR (kind = 'pairwise' AND response_b_id IS NOT NULL)",
            name="responses_match_kind",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    kind: Mapped[str] = mapped_column(String(20))
    context_id: Mapped[int] = mapped_column(ForeignKey("contexts.id"))
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))
    response_b_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id"), nullable=True)
    # Attention check: the expected answer per criterion, e.g. {"overall": "A"}.
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSONValue, nullable=True)
    # "onboarding": a gold task answered before the real ones, with ``feedback`` shown after it.
    stage: Mapped[str] = mapped_column(String(20), default="main")
    feedback: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Order within the campaign.
    position: Mapped[int] = mapped_column(Integer, default=0)
    import_id: Mapped[int | None] = mapped_column(
        ForeignKey("task_imports.id", ondelete="SET NULL"), nullable=True, index=True
    )

    campaign: Mapped[Campaign] = relationship(back_populates="tasks")
    context: Mapped[Context] = relationship()
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id])
    response_b: Mapped[Response | None] = relationship(foreign_keys=[response_b_id])
    assignments: Mapped[list[Assignment]] = relationship(back_populates="task")


class Assignment(Base):
    """A task given to one annotator, with the side on which they see response A."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "annotator_id"),
        CheckConstraint("status IN ('pending', 'done', 'skipped')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    # Randomised per annotator and task so that position bias averages out.
    left_is_a: Mapped[bool] = mapped_column(Boolean, default=True)
    # Place in this annotator's queue (seeded shuffle per annotator; onboarding tasks come first).
    queue_order: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    assigned_at: Mapped[datetime] = _now_column()

    task: Mapped[Task] = relationship(back_populates="assignments")
    annotator: Mapped[Annotator] = relationship()
    judgments: Mapped[list[Judgment]] = relationship(back_populates="assignment")


class Judgment(Base):
    """One answer to one criterion of an assignment.

    ``choice`` names the task's response ("A" = ``response_a``), not the screen side; the UI maps
    sides through ``Assignment.left_is_a``. ``choice = "n/a"`` is a "can't judge" answer to a
    criterion that allows it (rating and choice both say nothing then). An edit adds a row with ``revision + 1`` and the highest
    revision counts; submitting the identical answer again must return the existing row.
    """

    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("assignment_id", "criterion", "revision"),
        CheckConstraint("choice IN ('A', 'B', 'tie', 'n/a')", name="choice"),
        CheckConstraint("rating IS NOT NULL OR choice IS NOT NULL", name="has_answer"),
        CheckConstraint("revision >= 0", name="revision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    criterion: Mapped[str] = mapped_column(String(100))
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(10), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_at: Mapped[datetime] = _now_column()
    revision: Mapped[int] = mapped_column(Integer, default=0)

    assignment: Mapped[Assignment] = relationship(back_populates="judgments")


class Event(Base):
    """An append-only log line: "opened", "submitted", "edited", "skipped", ... with a payload."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotators.id"), nullable=True, index=True
    )
    assignment_id: Mapped[int | None] = mapped_column(
        ForeignKey("assignments.id"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    at: Mapped[datetime] = _now_column()


# --- arena ----------------------------------------------------------------------------------


class ArenaVote(Base):
    """One side-by-side round of the demo: two models answered the same user turn, a person voted.

    ``vote`` names the screen side: "A" means the model shown on the LEFT (``left_model``) was
    better, "B" the one on the right; "tie" and "both_bad" need no side. ``outcome`` restates it
    in terms of ``model_a`` / ``model_b``. ``round_id`` is unique, so a round is voted once.
    """

    __tablename__ = "arena_votes"
    __table_args__ = (
        CheckConstraint("mode IN ('blind', 'named')", name="mode"),
        CheckConstraint("vote IN ('A', 'B', 'tie', 'both_bad')", name="vote"),
        CheckConstraint("left_model = model_a OR left_model = model_b", name="left_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[str] = mapped_column(String(64), unique=True)
    mode: Mapped[str] = mapped_column(String(10))
    model_a: Mapped[str] = mapped_column(String(200))
    model_a_version: Mapped[str] = mapped_column(String(200), default="")
    model_b: Mapped[str] = mapped_column(String(200))
    model_b_version: Mapped[str] = mapped_column(String(200), default="")
    left_model: Mapped[str] = mapped_column(String(200))
    vote: Mapped[str] = mapped_column(String(10))
    # Full backend.types.Dialogue dumps, one per side.
    conversation_a: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    conversation_b: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    voted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # The voter: a per-browser id, so that a daily vote cap and a voter check can apply.
    session_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    # Where the vote comes from: "arena" (this demo), "crsarena-dial" (imported), "simulated".
    source: Mapped[str] = mapped_column(String(40), default="arena")
    # Hygiene flags set when the vote was stored, e.g. "identity_leak"; flagged votes stay out
    # of the leaderboard fit but are kept for analysis.
    flags: Mapped[list[str]] = mapped_column(JSONValue, default=list)
    # Per side ("a", "b"), one record per system turn: latency, length, items and their rates
    # (see db.turn_stats). None for votes stored before migration 0003 and for imported ones.
    turn_stats: Mapped[dict[str, Any] | None] = mapped_column(JSONValue, nullable=True)

    @property
    def outcome(self) -> ArenaOutcome:
        """The vote relative to ``model_a``: "A" if model_a won, "B" if model_b won, else as voted.

        When both sides run the same model name, the left one is taken to be ``model_a``.
        """
        if self.vote in ("tie", "both_bad") or self.left_model == self.model_a:
            return self.vote  # type: ignore[return-value]
        return "B" if self.vote == "A" else "A"
