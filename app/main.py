"""The Gradio demo: Chat, Arena and Leaderboard tabs over a model backend.

The demo is a client of the backend (`backend/server.py`): with no ``--backend URL`` it starts one
in-process on the default models and still talks to it over HTTP, exactly as it would to a GPU host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.arena import build_arena_tab
from app.cards import (
    CARD_CSS,
    chat_messages,
    escape_text,
    item_cards,
    items_of,
    score_chart,
    trace_markdown,
)
from app.in_flight import CLICK_TIME_JS, InFlight
from app.leaderboard import build_leaderboard_tab
from backend.client import BackendClient, BackendError, plain_message
from backend.server import ModelInfo
from backend.types import Dialogue, Reply, Turn
from db.session import init_db

log = logging.getLogger(__name__)
MODEL_POLL_S = 3.0  # how often an open page asks for model states while some are on their way
PENDING = ("loading", "queued", "training")
NO_MODEL = "**Pick a model first.** None is ready yet; the list fills as models become ready."


def history_markdown(client: BackendClient, user_id: str | None) -> str:
    """The picked user's latest liked and disliked items."""
    if not user_id:
        return "_No user picked: models see only the dialogue._"
    try:
        history = client.history(user_id)
    except BackendError as err:
        log.warning("history of %s not loaded: %s", user_id, err)
        return f"**Could not load the history.** {plain_message(err)}"
    titles = history.titles

    def names(interactions):
        return ", ".join(titles.get(i.item_id, i.item_id) for i in interactions[-8:]) or "—"

    return f"**Liked:** {names(history.liked)}\n\n**Disliked:** {names(history.disliked)}"


def chat_turn(
    client: BackendClient, model: str, message: str, dialogue: Dialogue, user_id: str | None
) -> Iterator[tuple[list[dict[str, str]], Dialogue, Reply | None, str]]:
    """Stream one chat turn: yields (chat messages, dialogue, final reply or None, status).

    A message the backend refuses or cannot answer is taken back out of the dialogue, so the
    next message is not refused for it too; the status says why in plain words.
    """
    dialogue.turns.append(Turn(role="user", text=message))
    shown = chat_messages(dialogue)
    partial = ""
    try:
        for part in client.stream(model, dialogue, user_id=user_id or None):
            if isinstance(part, Reply):
                dialogue.turns.append(Turn(role="system", text=part.text, items=part.item_ids[:10]))
                yield chat_messages(dialogue), dialogue, part, ""
                return
            partial += part
            yield (
                [*shown, {"role": "assistant", "content": escape_text(partial)}],
                dialogue,
                None,
                "",
            )
    except BackendError as err:
        log.warning("chat turn with %s failed: %s", model, err)
        dialogue.turns.pop()
        yield shown[:-1], dialogue, None, f"**{plain_message(err)}**"


def too_long(client: BackendClient, message: str) -> str:
    """The plain-words refusal of a message over the backend's limit, or ""."""
    try:
        limit = client.health().max_message_chars
    except BackendError:
        return ""  # the send itself will say the backend is away
    if len(message) > limit:
        return (
            f"**Message too long: {limit:,} characters at most** (this one has {len(message):,})."
        )
    return ""


def model_states(infos: list[ModelInfo]) -> str:
    """One line per model that is not ready yet: loading, queued, training with progress, failed."""
    lines = []
    for m in infos:
        if m.status == "ready":
            continue
        if m.status == "training" and m.progress and m.progress.get("total"):
            done = 100 * m.progress["done"] / m.progress["total"]
            eta = m.progress.get("eta_s")
            left = f", about {max(1, round(eta / 60))} min left" if eta else ""
            state = f"training {done:.0f} %{left}"
        elif m.status == "error":
            state = f"unavailable: {m.error}"
        else:
            state = {
                "loading": "loading",
                "queued": "waiting to be trained",
                "training": "training",
            }[m.status]
        lines.append(f"- **{m.name}**: {state}")
    if not lines:
        return ""
    return "Models on their way (they join the list when ready):\n" + "\n".join(lines)


def build_demo(client: BackendClient, engine: Any) -> gr.Blocks:
    """All three tabs over ``client``; votes and exports go to ``engine``'s database.

    The model lists follow the backend: read on every page load, and every few seconds while
    some model is still loading or training.
    """

    def fetch_models() -> list[ModelInfo]:
        try:
            return client.models()
        except BackendError as err:
            log.warning("backend not reachable: %s", err)
            return []

    infos = fetch_models()
    ready = [m.name for m in infos if m.status == "ready"]
    try:
        users = client.users(limit=200)
    except BackendError:
        users = []

    with gr.Blocks(title="CRS Arena") as demo:
        gr.Markdown(
            "# CRS Arena\nChat with conversational recommenders, compare them side by side, vote."
        )
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                dialogue = gr.State(lambda: Dialogue(id="chat"))
                flight = gr.State(InFlight)
                clicked_at = gr.Number(visible=False)  # set by CLICK_TIME_JS on each click
                with gr.Row():
                    model = gr.Dropdown(
                        ready,
                        value=ready[0] if ready else None,
                        label="Model",
                        elem_id="chat-model",
                    )
                    user = gr.Dropdown(
                        ["", *users], value="", label="User history (optional)", elem_id="chat-user"
                    )
                states = gr.Markdown(model_states(infos), elem_id="model-states")
                with gr.Accordion("Models", open=False):
                    descriptions = gr.Markdown(elem_id="model-descriptions")
                history = gr.Markdown(history_markdown(client, None))
                chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chat-bot")
                with gr.Row():
                    text = gr.Textbox(
                        placeholder="Ask for a movie…",
                        show_label=False,
                        scale=4,
                        elem_id="chat-input",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                    clear = gr.Button("New chat", scale=1, elem_id="chat-clear")
                status = gr.Markdown(elem_id="chat-status")
                cards = gr.HTML(elem_id="chat-cards")
                chart = gr.Plot(label="Scores", elem_id="chat-chart")
                with gr.Accordion("Trace", open=False):
                    trace = gr.Markdown(elem_id="chat-trace")

                def on_send(
                    message: str,
                    model_name: str | None,
                    user_id: str,
                    dlg: Dialogue,
                    flight: InFlight,
                    clicked_at: float | None = None,
                ):
                    """Yields the outputs below; the text box is emptied only once answered."""

                    def shown(messages=None, status_line=None, reply=None):
                        """One update of the outputs (None: left as it is); cards, chart and
                        trace come with a reply."""
                        keep = gr.skip()
                        if reply is None:
                            return (
                                keep if messages is None else messages,
                                dlg,
                                keep,
                                keep,
                                keep,
                                keep if status_line is None else status_line,
                                keep,
                            )
                        return (
                            messages,
                            dlg,
                            item_cards(reply, items_of(client, reply)),
                            score_chart(reply),
                            trace_markdown(reply),
                            "",
                            "",
                        )

                    message = (message or "").strip()
                    refusal = (
                        NO_MODEL
                        if not model_name
                        else "Type a message first."
                        if not message
                        else too_long(client, message)
                    )
                    with flight.streaming(clicked_at) as stream:
                        if stream.abandoned:
                            return  # sent before a New chat that the server happened to run first
                        if refusal:
                            yield shown(status_line=refusal)
                            return
                        for messages, _, reply, error in chat_turn(
                            client, model_name, message, dlg, user_id
                        ):
                            if stream.abandoned:
                                return  # New chat was clicked: this reply must not come back
                            yield shown(messages, error, reply)

                outputs = [chatbot, dialogue, cards, chart, trace, status, text]
                inputs = [text, model, user, dialogue, flight, clicked_at]
                send.click(on_send, inputs, outputs, api_name="chat", js=CLICK_TIME_JS)
                text.submit(on_send, inputs, outputs, js=CLICK_TIME_JS)

                # New chat stops a reply that is still streaming, so it cannot come back later.
                def new_chat(flight: InFlight, at: float | None):
                    flight.reset(at)
                    return [], Dialogue(id="chat"), "", None, "", "", gr.skip()

                clear.click(new_chat, [flight, clicked_at], outputs, js=CLICK_TIME_JS)
                user.change(lambda u: history_markdown(client, u), user, history)
            with gr.Tab("Arena", id="arena"):
                pickers = build_arena_tab(client, engine, ready)
            with gr.Tab("Leaderboard", id="leaderboard"):
                build_leaderboard_tab(engine)

        timer = gr.Timer(MODEL_POLL_S, active=any(m.status != "ready" for m in infos))

        def refresh(current: str | None):
            found = fetch_models()
            names = [m.name for m in found if m.status == "ready"]
            keep = current if current in names else (names[0] if names else None)
            pending = any(m.status in PENDING for m in found)
            about = (
                "\n".join(f"- **{m.name}** ({m.status}): {m.description}" for m in found)
                or "_The backend is not reachable._"
            )
            return (
                gr.update(choices=names, value=keep),
                *[gr.update(choices=names)] * len(pickers),
                model_states(found),
                about,
                gr.Timer(active=pending),
            )

        targets = [model, *pickers, states, descriptions, timer]
        demo.load(refresh, model, targets)
        timer.tick(refresh, model, targets)
    return demo


def launch(
    backend_url: str | None = None,
    config_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    db_url: str | None = None,
    block: bool = True,
) -> tuple[gr.Blocks, str]:
    """Start the demo (and, without ``backend_url``, a backend in this process); returns (demo, url)."""
    if backend_url is None:
        from backend.server import DEFAULT_CONFIG, ServerConfig, start_in_thread

        config = ServerConfig.from_yaml(config_path or DEFAULT_CONFIG)
        # The page opens at once; models load (and train) behind it and join the lists when ready.
        config = config.model_copy(update={"wait_for_models": False})
        backend_url, _stop = start_in_thread(config)
    client = BackendClient(backend_url)
    engine = init_db(db_url)
    demo = build_demo(client, engine)
    demo.queue(default_concurrency_limit=8)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        css=CARD_CSS,
        footer_links=["api"],
    )
    return demo, url
