"""Arena votes: record a side-by-side round once, list votes, turn a round into an annotation task.

A round is one user turn answered by two models; the stakeholder's vote names the screen side
("A" = the model shown on the left). Votes feed the leaderboard (``db.ranking``) through
``votes_to_battles``, and a round can be queued for careful annotation with ``export_arena_round``.
A vote records its ``source`` (this demo, an import, a simulation), hygiene ``flags`` (see
``db.vote_hygiene``) and per-turn records (``db.turn_stats``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from backend.types import Dialogue, ScoredItem
from db.campaigns import TEMPLATES, campaign_from_spec
from db.content import store_context, store_response
from db.schema import ArenaOutcome, ArenaVote, Campaign, Task
from db.session import get_or_create, session_scope

log = logging.getLogger(__name__)

VOTES = ("A", "B", "tie", "both_bad")
MODES = ("blind", "named")
ARENA_SOURCE = "arena"
# Where a vote comes from; the leaderboard can show each source, or several together.
SOURCES = (ARENA_SOURCE, "crsarena-dial", "simulated")
# The one question of an arena round, as the built-in "arena" protocol asks it.
ARENA_CRITERION: dict[str, Any] = TEMPLATES["arena"].stored_criteria()[0]


class AlreadyVoted(Exception):
    """A round already has a different vote; a round can be voted only once."""

    def __init__(self, round_id: str, existing: ArenaVote) -> None:
        super().__init__(
            f"arena round {round_id!r} was already voted {existing.vote!r} "
            f"({existing.model_a} vs {existing.model_b}); start a new round to vote again"
        )
        self.round_id = round_id
        self.existing = existing


def _dialogue_json(conversation: Dialogue | Mapping[str, Any], name: str) -> dict[str, Any]:
    if isinstance(conversation, Dialogue):
        return conversation.model_dump(mode="json")
    # Validate dicts too, so that a malformed conversation fails here and not in an analysis.
    try:
        return Dialogue.model_validate(conversation).model_dump(mode="json")
    except ValueError as error:
        raise ValueError(f"`{name}` is not a backend.types.Dialogue: {error}") from error


# What makes two submissions "the same vote" (the conversations are the round's, not the vote's).
_VOTE_IDENTITY = (
    "mode",
    "model_a",
    "model_a_version",
    "model_b",
    "model_b_version",
    "left_model",
    "vote",
    "source",
)


def record_vote(
    engine: Engine | None,
    *,
    round_id: str,
    model_a: str,
    model_b: str,
    left_model: str,
    vote: str,
    conversation_a: Dialogue | Mapping[str, Any],
    conversation_b: Dialogue | Mapping[str, Any],
    mode: str = "blind",
    model_a_version: str = "",
    model_b_version: str = "",
    started_at: datetime | None = None,
    voted_at: datetime | None = None,
    session_id: str | None = None,
    source: str = ARENA_SOURCE,
    flags: Iterable[str] = (),
    turn_stats: Mapping[str, Any] | None = None,
) -> ArenaVote:
    """Store the vote for arena round ``round_id`` and return it.

    ``vote`` is "A" (the model shown on the left, ``left_model``, was better), "B" (the right one
    was), "tie" or "both_bad". ``conversation_a`` / ``conversation_b`` are the full dialogues of
    ``model_a`` / ``model_b``. Submitting the same vote again (a double click, a retry) returns the
    stored vote; a different vote for the same round raises ``AlreadyVoted``.
    Datetimes must be timezone-aware; ``voted_at`` defaults to now. ``source`` says where the
    vote comes from (one of ``SOURCES``), ``flags`` marks votes the leaderboard leaves out (see
    ``db.vote_hygiene``) and ``turn_stats`` holds the per-turn records of ``db.turn_stats``.
    """
    if vote not in VOTES:
        raise ValueError(f"`vote` is {vote!r}; use one of {', '.join(VOTES)}")
    if mode not in MODES:
        raise ValueError(f"`mode` is {mode!r}; use one of {', '.join(MODES)}")
    if source not in SOURCES:
        raise ValueError(f"`source` is {source!r}; use one of {', '.join(SOURCES)}")
    if left_model not in (model_a, model_b):
        raise ValueError(
            f"`left_model` is {left_model!r}; it must name one of the two models "
            f"({model_a!r} or {model_b!r})"
        )
    fields: dict[str, Any] = {
        "mode": mode,
        "model_a": model_a,
        "model_a_version": model_a_version,
        "model_b": model_b,
        "model_b_version": model_b_version,
        "left_model": left_model,
        "vote": vote,
        "conversation_a": _dialogue_json(conversation_a, "conversation_a"),
        "conversation_b": _dialogue_json(conversation_b, "conversation_b"),
        "started_at": started_at,
        "session_id": session_id,
        "source": source,
        "flags": sorted(set(flags)),
        "turn_stats": dict(turn_stats) if turn_stats is not None else None,
    }
    if voted_at is not None:
        fields["voted_at"] = voted_at
    with session_scope(engine) as session:
        stored, created = get_or_create(session, ArenaVote, defaults=fields, round_id=round_id)
    if not created and any(getattr(stored, key) != fields[key] for key in _VOTE_IDENTITY):
        raise AlreadyVoted(round_id, stored)
    if created:
        log.info("arena round %s: %s vs %s, vote %s", round_id, model_a, model_b, vote)
    return stored


def list_votes(
    engine: Engine | None = None,
    *,
    blind_only: bool = True,
    sources: Iterable[str] | None = None,
) -> list[ArenaVote]:
    """All arena votes, oldest first; only blind rounds unless ``blind_only=False``.

    Named rounds are left out by default because knowing the model's name biases the vote.
    ``sources`` keeps only votes from those sources (default: every source).
    """
    query = select(ArenaVote).order_by(ArenaVote.voted_at, ArenaVote.id)
    if blind_only:
        query = query.where(ArenaVote.mode == "blind")
    if sources is not None:
        query = query.where(ArenaVote.source.in_(list(sources)))
    with session_scope(engine, write=False) as session:
        return list(session.scalars(query))


def votes_since(engine: Engine | None, session_id: str, since: datetime) -> int:
    """How many votes voter ``session_id`` cast at or after ``since`` (for the daily cap)."""
    query = (
        select(func.count())
        .select_from(ArenaVote)
        .where(ArenaVote.session_id == session_id, ArenaVote.voted_at >= since)
    )
    with session_scope(engine, write=False) as session:
        return int(session.scalar(query) or 0)


def stored_battles(
    engine: Engine | None = None, *, blind_only: bool = True
) -> list[tuple[str, str, ArenaOutcome]]:
    """``(model_a, model_b, outcome)`` of every stored vote, read without the conversations.

    For callers that need only the battle history (the blind-mode pair draw), cheaply.
    """
    query = select(ArenaVote.model_a, ArenaVote.model_b, ArenaVote.left_model, ArenaVote.vote)
    if blind_only:
        query = query.where(ArenaVote.mode == "blind")
    with session_scope(engine, write=False) as session:
        rows = session.execute(query.order_by(ArenaVote.id)).all()
    return [
        (a, b, ArenaVote(model_a=a, model_b=b, left_model=left, vote=vote).outcome)
        for a, b, left, vote in rows
    ]


def votes_to_battles(
    votes: Iterable[ArenaVote], *, with_version: bool = False
) -> list[tuple[str, str, ArenaOutcome]]:
    """``(model_a, model_b, outcome)`` triples for ``db.ranking``, the outcome relative to model_a.

    With ``with_version=True`` a model is named ``name@version`` (when it has a version), so
    that versions of one system are ranked separately.
    """

    def label(name: str, version: str) -> str:
        return f"{name}@{version}" if with_version and version else name

    return [
        (
            label(vote.model_a, vote.model_a_version),
            label(vote.model_b, vote.model_b_version),
            vote.outcome,
        )
        for vote in votes
    ]


def votes_to_style(votes: Iterable[ArenaVote]) -> tuple[np.ndarray, np.ndarray]:
    """Style counts of each side's replies, ``(battles, 2)`` arrays for model_a and model_b.

    The columns are the words of all system turns and the number of distinct items they showed:
    the inputs of ``db.ranking.style_covariates`` (style control).
    """
    counts: list[list[tuple[int, int]]] = [[], []]
    for vote in votes:
        for side, conversation in enumerate((vote.conversation_a, vote.conversation_b)):
            replies = [t for t in conversation.get("turns", []) if t.get("role") == "system"]
            words = sum(len(str(t.get("text", "")).split()) for t in replies)
            items = len({i for t in replies for i in t.get("items", [])})
            counts[side].append((words, items))
    return (
        np.asarray(counts[0], dtype=np.float64).reshape(-1, 2),
        np.asarray(counts[1], dtype=np.float64).reshape(-1, 2),
    )


def _final_reply(
    conversation: Dialogue, round_id: str, side: str
) -> tuple[Dialogue, str, list[dict[str, Any]]]:
    if not conversation.turns or conversation.turns[-1].role != "system":
        raise ValueError(
            f"arena round {round_id!r}: conversation_{side} does not end with a system reply, "
            "so there is nothing to compare; export rounds after both models have answered"
        )
    last = conversation.turns[-1]
    # Arena conversations keep the shown ranking but not the scores: 0.0 stands for "unknown".
    items = [
        ScoredItem(item_id=item_id, score=0.0).model_dump(mode="json") for item_id in last.items
    ]
    return conversation.prefix(len(conversation.turns) - 1), last.text, items


def export_arena_round(engine: Engine | None, round_id: str, campaign: str = "arena") -> Task:
    """Queue arena round ``round_id`` as a pairwise annotation task in campaign ``campaign``.

    Creates what is missing: the campaign (pairwise, one "overall" criterion A/B/tie, three
    annotators per task), both systems, the context (the dialogue before the final replies, from
    ``conversation_a``; source "arena", external id ``round_id``), both responses and the task with
    response A = ``model_a``. Exporting a round twice returns the same task.
    """
    with session_scope(engine) as session:
        vote = session.scalars(select(ArenaVote).where(ArenaVote.round_id == round_id)).first()
        if vote is None:
            raise LookupError(
                f"no arena vote with round_id {round_id!r}; record the vote before exporting it"
            )
        if (vote.model_a, vote.model_a_version) == (vote.model_b, vote.model_b_version):
            raise ValueError(
                f"arena round {round_id!r} compares {vote.model_a!r} with itself; "
                "a pairwise task needs two different systems (or versions)"
            )
        context_a, text_a, items_a = _final_reply(
            Dialogue.model_validate(vote.conversation_a), round_id, "a"
        )
        context_b, text_b, items_b = _final_reply(
            Dialogue.model_validate(vote.conversation_b), round_id, "b"
        )
        if context_a.turns != context_b.turns:
            log.warning(
                "arena round %s: the two conversations diverged before the last turn; the task "
                "shows model_a's history (both stay in arena_votes)",
                round_id,
            )

        # An existing campaign of any protocol with pairwise tasks takes the round as it is.
        target = session.scalars(select(Campaign).where(Campaign.name == campaign)).first()
        target = target or campaign_from_spec(session, TEMPLATES["arena"], campaign, "arena")
        if "pairwise" not in target.task_kinds:
            raise ValueError(
                f"campaign {campaign!r} has task kinds {target.task_kinds}; "
                "export arena rounds to a campaign with pairwise tasks"
            )
        context = store_context(session, ARENA_SOURCE, round_id, context_a.model_dump(mode="json"))
        responses = [
            store_response(session, context.id, name, version, text, items)
            for name, version, text, items in (
                (vote.model_a, vote.model_a_version, text_a, items_a),
                (vote.model_b, vote.model_b_version, text_b, items_b),
            )
        ]

        last_position = session.scalar(
            select(func.max(Task.position)).where(Task.campaign_id == target.id)
        )
        task, created = get_or_create(
            session,
            Task,
            defaults={"position": 0 if last_position is None else last_position + 1},
            campaign_id=target.id,
            kind="pairwise",
            context_id=context.id,
            response_a_id=responses[0].id,
            response_b_id=responses[1].id,
        )
    if created:
        log.info("arena round %s queued as task %d in campaign %r", round_id, task.id, campaign)
    return task
