"""Per-turn records of an arena battle: how fast, how long, which items, and how fresh they were.

Each side of a battle gets one record per system turn, stored with the vote
(``ArenaVote.turn_stats = {"a": [record, ...], "b": [...]}``):

* ``turn``: the index of the reply's turn in the side's dialogue;
* ``latency_s``: wall-clock seconds from sending the turn to the final reply, as the app saw it;
  ``model_s``: the seconds the backend reported (``Reply.seconds``);
* ``words``: words of the reply text; ``tokens``: completion tokens the backend reported (0 when
  it reports none);
* ``items``: the item ids the reply showed, in rank order;
* ``off_catalog_rate``: share of those items the catalog does not know (None when unchecked);
* ``repeated_rate``: share that repeat an item earlier in the same list or in an earlier reply of
  the same side;
* ``already_mentioned_rate``: share mentioned in an earlier turn of the dialogue, by the user or
  the system. User turns count only with linked item ids: the demo's own user turns carry none,
  because the backend links typed titles on its side.

Rates are None for a reply without items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from backend.types import Dialogue


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def turn_record(
    before: Dialogue,
    text: str,
    items: Sequence[str],
    *,
    latency_s: float,
    model_s: float = 0.0,
    tokens: int = 0,
    is_known: Callable[[str], bool | None] | None = None,
) -> dict[str, Any]:
    """The record of one reply (``text`` showing ``items``) to the dialogue ``before`` it.

    ``is_known(item_id)`` says whether the catalog has the item (None: could not tell); without
    it, or when it could tell for no item, ``off_catalog_rate`` is None.
    """
    earlier_system = {i for turn in before.turns if turn.role == "system" for i in turn.items}
    mentioned = set(before.mentioned_items())
    repeated, seen = [], set()
    for item_id in items:
        repeated.append(item_id in seen or item_id in earlier_system)
        seen.add(item_id)
    known = [is_known(item_id) for item_id in items] if is_known else []
    checked = [k for k in known if k is not None]
    return {
        "turn": len(before.turns),
        "latency_s": round(latency_s, 3),
        "model_s": round(model_s, 3),
        "words": len(text.split()),
        "tokens": tokens,
        "items": list(items),
        "off_catalog_rate": _rate([not k for k in checked]),
        "repeated_rate": _rate(repeated),
        "already_mentioned_rate": _rate([item_id in mentioned for item_id in items]),
    }
