"""How a task looks: the dialogue as chat bubbles, the responses, guidelines and rubric.

Every text here comes from the database and is untrusted. Streamlit renders it as Markdown
(never as HTML: ``unsafe_allow_html`` is never used; the only scripts are this module's own,
for scrolling and the completion redirect), and ``plain`` escapes the Markdown too, so a
response containing ``![x](http://...)`` or ``:red[...]`` shows those characters instead of
loading an image or colouring text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

from db.annotation import ShownResponse, scale_label, scale_values

# ASCII punctuation that Markdown or Streamlit's extensions (":color[...]", ":emoji:", "$math$")
# give a meaning; CommonMark lets a backslash escape any of it.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")
_ROLE_NAMES = {"user": "User", "system": "Recommender"}


def plain(text: str) -> str:
    """``text`` escaped so that Markdown shows it literally."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def dialogue(turns: Sequence[Mapping[str, Any]]) -> None:
    """The dialogue so far, one chat bubble per turn."""
    for turn in turns:
        role = str(turn.get("role", "user"))
        # st.chat_message gives "user" and "assistant" their own avatars.
        with st.chat_message("user" if role == "user" else "assistant"):
            st.caption(_ROLE_NAMES.get(role, plain(role)))
            st.markdown(plain(str(turn.get("text", ""))))


def response(shown: ShownResponse, heading: str) -> None:
    """One candidate response with the titles of the items it recommends."""
    with st.container(border=True):
        st.markdown(f"**{heading}**")
        st.markdown(plain(shown.text))
        if shown.item_titles:
            st.caption("Recommended: " + plain(" · ".join(shown.item_titles)))


def scale_option(criterion: Mapping[str, Any], value: Any) -> str:
    """A scale point as the annotator reads it: "4 — Fluent" (or just "4" without a label)."""
    label = scale_label(criterion, value)
    return plain(f"{value} — {label}" if label else str(value))


def criterion_title(criterion: Mapping[str, Any]) -> str:
    return plain(str(criterion["name"]).replace("_", " ").capitalize())


def criterion_question(criterion: Mapping[str, Any]) -> str:
    """The control's label: "Fluency — How fluent is it?" (the name alone without a question);
    optional criteria say so."""
    title = criterion_title(criterion)
    question = str(criterion.get("question") or "")
    if question and criterion["kind"] == "rating":
        title = f"{title} — {plain(question)}"
    if not criterion.get("required", True):
        title += " (optional)"
    return title


def scroll_to_top(key: Any) -> None:
    """Scroll the page to its top once (``key`` makes each call a new element, so it runs).

    A zero-height component frame of the same origin reaches its parent page; the script is our
    own, with a JSON-encoded key, never text from the database.
    """
    components.html(
        "<script>/* task " + json.dumps(str(key)) + " */"
        "const d = window.parent.document;"
        "for (const el of [d.querySelector('[data-testid=\"stMain\"]'),"
        " d.querySelector('[data-testid=\"stAppViewContainer\"]'), d.scrollingElement])"
        " { if (el) el.scrollTo(0, 0); }</script>",
        height=0,
    )


def redirect(url: str, delay_s: float) -> None:
    """Send the browser to ``url`` (an http(s) address from the campaign) after ``delay_s``."""
    if not url.startswith(("http://", "https://")):
        return
    st.html(
        f"<script>setTimeout(() => {{ window.top.location.href = {json.dumps(url)}; }},"
        f" {int(delay_s * 1000)});</script>",
        unsafe_allow_javascript=True,
    )


def guidelines(text: str, criteria: Sequence[Mapping[str, Any]]) -> None:
    """The campaign's guidelines, then each criterion's rubric and the label of every scale point.

    Guidelines are Markdown written by the study's organisers, so their formatting is kept.
    """
    if text.strip():
        st.markdown(text)
    for criterion in criteria:
        st.markdown(f"##### {criterion_title(criterion)}")
        if criterion.get("rubric"):
            st.markdown(plain(str(criterion["rubric"])))
        if criterion["kind"] == "pairwise":
            st.markdown(
                "Choose the response that is better on this criterion, or *Tie*. "
                "The order of the two responses is random."
            )
            continue
        points = "\n".join(f"- {scale_option(criterion, v)}" for v in scale_values(criterion))
        st.markdown(points)
