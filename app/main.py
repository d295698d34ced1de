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
from app.cards import CARD_CSS, chat_messages, item_cards, score_chart, trace_markdown
from app.leaderboard import build_leaderboard_tab
from backend.client import BackendClient, BackendError, BackendUnavailableError
from backend.types import Dialogue, Item, Reply, Turn
from db.session import init_db

log = logging.getLogger(__name__)


def _items_of(client: BackendClient, reply: Reply) -> dict[str, Item]:
    """Catalog entries of the shown items, for the cards (one request per card, top 6 only)."""
    items = {}
    for scored in reply.items[:6]:
        try:
            items[scored.item_id] = client.item(scored.item_id)
        except BackendError:
            continue  # a card without metadata still shows title and score
    return items


def history_markdown(client: BackendClient, user_id: str | None) -> str:
    """The picked user's latest liked and disliked items."""
    if not user_id:
        return "_No user picked: models see only the dialogue._"
    try:
        history = client.history(user_id)
    except BackendError as err:
        return f"**Could not load the history:** {err}"
    titles = history.titles

    def names(interactions):
        return ", ".join(titles.get(i.item_id, i.item_id) for i in interactions[-8:]) or "—"

    return f"**Liked:** {names(history.liked)}\n\n**Disliked:** {names(history.disliked)}"


def chat_turn(
    client: BackendClient, model: str, message: str, dialogue: Dialogue, user_id: str | None
) -> Iterator[tuple[list[dict[str, str]], Dialogue, Reply | None, str]]:
    """Stream one chat turn: yields (chat messages, dialogue, final reply or None, status)."""
    dialogue.turns.append(Turn(role="user", text=message))
    shown = chat_messages(dialogue)
    partial = ""
    try:
        for part in client.stream(model, dialogue, user_id=user_id or None):
            if isinstance(part, Reply):
                dialogue.turns.append(Turn(role="system", text=part.text, items=part.item_ids[:10]))
                yield [*shown, {"role": "assistant", "content": part.text}], dialogue, part, ""
                return
            partial += part
            yield [*shown, {"role": "assistant", "content": partial}], dialogue, None, ""
    except BackendError as err:
        dialogue.turns.pop()  # the turn was not answered; the user can send it again
        yield shown[:-1], dialogue, None, f"**{type(err).__name__}:** {err}"


def build_demo(client: BackendClient, engine: Any) -> gr.Blocks:
    """All three tabs over ``client``; votes and exports go to ``engine``'s database."""
    try:
        infos = client.models()
    except BackendUnavailableError as err:
        log.warning("backend not reachable while building the page: %s", err)
        infos = []
    ready = [m.name for m in infos if m.status == "ready"]
    descriptions = "\n".join(
        f"- **{m.name}**{'' if m.status == 'ready' else ' (unavailable: ' + (m.error or m.status) + ')'}: {m.description}"
        for m in infos
    )
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
                with gr.Accordion("Models", open=False):
                    gr.Markdown(descriptions or "_The backend is not reachable._")
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

                def on_send(message: str, model_name: str | None, user_id: str, dlg: Dialogue):
                    message = (message or "").strip()
                    if not model_name:
                        yield (
                            gr.skip(),
                            dlg,
                            "",
                            None,
                            "",
                            "**Pick a model first** (none is available if the backend is down).",
                        )
                        return
                    if not message:
                        yield (
                            gr.skip(),
                            dlg,
                            gr.skip(),
                            gr.skip(),
                            gr.skip(),
                            "Type a message first.",
                        )
                        return
                    for messages, dialogue_now, reply, error in chat_turn(
                        client, model_name, message, dlg, user_id
                    ):
                        if reply is None:
                            yield messages, dialogue_now, gr.skip(), gr.skip(), gr.skip(), error
                        else:
                            yield (
                                messages,
                                dialogue_now,
                                item_cards(reply, _items_of(client, reply)),
                                score_chart(reply),
                                trace_markdown(reply),
                                "",
                            )

                outputs = [chatbot, dialogue, cards, chart, trace, status]
                send.click(on_send, [text, model, user, dialogue], outputs, api_name="chat").then(
                    lambda: "", None, text
                )
                text.submit(on_send, [text, model, user, dialogue], outputs).then(
                    lambda: "", None, text
                )
                clear.click(lambda: ([], Dialogue(id="chat"), "", None, "", ""), None, outputs)
                user.change(lambda u: history_markdown(client, u), user, history)
            with gr.Tab("Arena", id="arena"):
                build_arena_tab(client, engine, ready)
            with gr.Tab("Leaderboard", id="leaderboard"):
                build_leaderboard_tab(engine)
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

        backend_url, _stop = start_in_thread(ServerConfig.from_yaml(config_path or DEFAULT_CONFIG))
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
