"""How a dialogue and a `Reply` look in the browser: messages, item cards, score chart, trace.

Titles, descriptions and model output are untrusted text: every string is HTML-escaped.
"""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go

from backend.types import Dialogue, Item, Reply

CARD_CSS = """
.crs-cards {display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px;}
.crs-card {border: 1px solid #d0d7de; border-radius: 8px; padding: 10px; font-size: 0.9em;}
.crs-card h4 {margin: 0 0 4px 0;}
.crs-card .meta {color: #57606a;}
.crs-card .score {float: right; font-family: monospace;}
"""


def chat_messages(dialogue: Dialogue) -> list[dict[str, str]]:
    """The dialogue in Gradio's messages format (system turns are the assistant's)."""
    return [
        {"role": "user" if t.role == "user" else "assistant", "content": t.text}
        for t in dialogue.turns
    ]


def item_cards(reply: Reply, items: dict[str, Item], top: int = 6, scores: bool = True) -> str:
    """HTML cards for the top items: title, year, genres, description and (if ``scores``) score."""
    if not reply.items:
        return "<p><em>No items recommended for this turn.</em></p>"
    cards = []
    for rank, scored in enumerate(reply.items[:top], start=1):
        item = items.get(scored.item_id)
        title = item.title if item else scored.title or scored.item_id
        year = f" ({item.year})" if item and item.year else ""
        genres = ", ".join(item.genres) if item else ""
        description = (
            (item.description[:220] + "…")
            if item and len(item.description) > 220
            else (item.description if item else "")
        )
        score = f'<span class="score">{scored.score:.3f}</span>' if scores else ""
        cards.append(
            f'<div class="crs-card" data-item-id="{html.escape(scored.item_id)}">{score}'
            f'<h4>{rank}. {html.escape(title)}{html.escape(year)}</h4><div class="meta">{html.escape(genres)}</div><p>{html.escape(description)}</p></div>'
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
