"""How a dialogue and a `Reply` look in the browser: messages, item cards, score chart, trace.

Titles, descriptions and model output are untrusted text: every string is HTML-escaped.
"""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go

from backend.client import BackendClient, BackendError
from backend.types import Dialogue, Item, Reply

CARD_CSS = """
.crs-cards {display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px;}
.crs-card {border: 1px solid #d0d7de; border-radius: 8px; padding: 10px; font-size: 0.9em;}
.crs-card h4 {margin: 0 0 4px 0;}
.crs-card .meta {color: #57606a;}
.crs-card .score {float: right; font-family: monospace;}
.crs-card .people {color: #57606a; font-size: 0.95em;}
.crs-card .why {margin-top: 6px; font-style: italic;}
"""


def escape_text(text: str) -> str:
    """Text for a chat bubble: shown literally, so "<img src=x>" is text, never an element."""
    return html.escape(text, quote=False)


def chat_messages(dialogue: Dialogue) -> list[dict[str, str]]:
    """The dialogue in Gradio's messages format (system turns are the assistant's), escaped."""
    return [
        {"role": "user" if t.role == "user" else "assistant", "content": escape_text(t.text)}
        for t in dialogue.turns
    ]


def items_of(client: BackendClient, reply: Reply, top: int = 6) -> dict[str, Item]:
    """Catalog entries of the shown items, for the cards (one request per card)."""
    items = {}
    for scored in reply.items[:top]:
        try:
            items[scored.item_id] = client.item(scored.item_id)
        except BackendError:
            continue  # a card without metadata still shows title and score
    return items


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def item_cards(reply: Reply, items: dict[str, Item], top: int = 6, scores: bool = True) -> str:
    """HTML cards for the top items: title, year, genres, people, description, the model's "why"
    and (if ``scores``) the score."""
    if not reply.items:
        return "<p><em>No items recommended for this turn.</em></p>"
    cards = []
    for rank, scored in enumerate(reply.items[:top], start=1):
        item = items.get(scored.item_id)
        title = item.title if item else scored.title or scored.item_id
        year = f" ({item.year})" if item and item.year else ""
        parts = [
            f"<h4>{rank}. {html.escape(title)}{html.escape(year)}</h4>",
            f'<div class="meta">{html.escape(", ".join(item.genres))}</div>' if item else "",
        ]
        if item:
            for role, label in (("director", "Directed by"), ("star", "With")):
                if names := item.people.get(role):
                    parts.append(
                        f'<div class="people">{label} {html.escape(", ".join(names[:3]))}</div>'
                    )
            if item.description:
                parts.append(f"<p>{html.escape(_shorten(item.description, 220))}</p>")
        if scored.why:
            parts.append(f'<div class="why">Why: {html.escape(_shorten(scored.why, 140))}</div>')
        score = f'<span class="score">{scored.score:.3f}</span>' if scores else ""
        cards.append(
            f'<div class="crs-card" data-item-id="{html.escape(scored.item_id)}">{score}'
            f"{''.join(parts)}</div>"
        )
    return f'<div class="crs-cards">{"".join(cards)}</div>'


def score_chart(reply: Reply, top: int = 10) -> go.Figure:
    """Horizontal bars of the top-k scores, best at the top."""
    shown = reply.items[:top][::-1]
    fig = go.Figure(
        go.Bar(x=[s.score for s in shown], y=[s.title or s.item_id for s in shown], orientation="h")
    )
    fig.update_layout(
        height=60 + 28 * max(len(shown), 1), margin=dict(l=10, r=10, t=30, b=10), title="Top scores"
    )
    return fig


def trace_markdown(reply: Reply) -> str:
    """The model's steps as Markdown: one heading per step with its input and output as JSON."""
    if not reply.trace:
        return "_This model reports no steps._"
    parts = [f"**{reply.model}** answered in {reply.seconds:.2f} s"]
    for step in reply.trace:
        body = json.dumps(
            {"input": step.input, "output": step.output}, indent=1, default=str, ensure_ascii=False
        )
        if len(body) > 4000:  # a full prompt can be long; the panel is for a glance
            body = body[:4000] + "\n…"
        parts.append(f"#### {step.name} ({step.seconds:.2f} s)\n```json\n{body}\n```")
    return "\n\n".join(parts)
