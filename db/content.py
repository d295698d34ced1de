"""Contexts and responses stored by what they say, not only by the ids they came with.

Imported files and arena rounds name their contexts ("1", "redial-20001:4", a round id); two
studies often reuse such ids for different dialogues, and a corrected file reuses them for the
corrected text. Keying rows on (id, sha256 of the content) makes each of those a row of its own,
so a task always shows exactly the text that was imported for it, while the same text imported
twice is still stored once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.schema import Context, Response, System, content_hash
from db.session import get_or_create


def store_context(
    session: Session,
    source: str,
    external_id: str,
    dialogue: dict[str, Any],
    user_history: dict[str, Any] | None = None,
) -> Context:
    """The context with this id and content, inserted if new (inside a write session)."""
    context, _ = get_or_create(
        session,
        Context,
        defaults={"dialogue": dialogue, "user_history": user_history},
        source=source,
        external_id=external_id,
        content_hash=content_hash(dialogue, user_history),
    )
    return context


def store_response(
    session: Session,
    context_id: int,
    system: str,
    version: str,
    text: str,
    items: list[dict[str, Any]],
    trace: list[dict[str, Any]] | None = None,
) -> Response:
    """``system``'s response with this text and items in ``context_id``, inserted if new.

    The trace is not part of its identity: the same answer reached by another path is the same
    response to an annotator.
    """
    row, _ = get_or_create(session, System, name=system, version=version)
    response, _ = get_or_create(
        session,
        Response,
        defaults={"text": text, "items": items, "trace": trace or []},
        context_id=context_id,
        system_id=row.id,
        content_hash=content_hash(text, items),
    )
    return response
