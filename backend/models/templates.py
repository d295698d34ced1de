"""Reply text for models that rank items but do not generate language (the classic baselines)."""

from __future__ import annotations

from backend.types import Item


def recommendation_text(items: list[Item]) -> str:
    """A short, plain recommendation naming the top item and two alternatives."""
    if not items:
        return "I'm not sure what to suggest yet. Could you tell me a movie you liked?"
    first = items[0]
    genres = "/".join(g.lower() for g in first.genres[:2])
    article = "an" if genres[:1] in tuple("aeiou") else "a"
    text = f"You might enjoy {first.display_title}" + (
        f", {article} {genres} film." if genres else "."
    )
    others = [i.display_title for i in items[1:3]]
    if others:
        text += " If that's not it, try " + " or ".join(others) + "."
    return text
