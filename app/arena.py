"""The Arena: one user turn goes to two models, both stream at once, the stakeholder votes.

Round logic (pairing, sides, vote rules) is plain Python so it is tested without a browser; the
Gradio tab at the bottom only wires it to widgets.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import gradio as gr
from sqlalchemy.exc import OperationalError

from app.cards import chat_messages, item_cards
from backend.client import BackendClient, BackendError
from backend.types import Dialogue, Reply, Turn
from db.arena import AlreadyVoted, export_arena_round, record_vote

log = logging.getLogger(__name__)
VOTES = {"A better": "A", "B better": "B", "Tie": "tie", "Both bad": "both_bad"}
# Said instead of a database error; the round stays open, so the same click can be repeated.
BUSY_VOTE = "Your vote could not be saved just now because the database is busy. Please click it again in a few seconds."


def draw_pair(models: list[str], rng: random.Random) -> tuple[str, str]:
    """Two different models in random order: (left, right). Blind mode's draw."""
    if len(models) < 2:
        raise ValueError(f"the arena needs two available models; the backend serves {len(models)}")
    left, right = rng.sample(models, 2)
    return left, right


@dataclass
class Side:
    model: str
    version: str = ""
    dialogue: Dialogue = field(default_factory=lambda: Dialogue(id="arena"))
    text: str = ""  # the reply streaming in
    reply: Reply | None = None  # the last finished reply, for the item cards
    done: bool = False
    error: str = ""


@dataclass
class ArenaRound:
    """One arena round: two sides, the mode, and the vote once cast."""

    left: Side
    right: Side
    mode: str = "blind"
    round_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    vote: str | None = None

    @property
    def can_vote(self) -> bool:
        """Only once both replies finished without error, and only once per round."""
        return (
            self.vote is None
            and self.left.done
            and self.right.done
            and not (self.left.error or self.right.error)
            and bool(self.left.dialogue.turns)
        )

    def labels(self) -> tuple[str, str]:
        """What the two panels are called: hidden names in blind mode until the vote."""
        if self.mode == "blind" and self.vote is None:
            return "Model A", "Model B"
        return f"Model A: {self.left.model}", f"Model B: {self.right.model}"

    def cast(self, engine, choice: str, session_id: str | None = None) -> None:
        """Store the vote ("A" = left panel) with both conversations; refuses a second vote."""
        if self.vote is not None:
            raise ValueError(f"this round was already voted ({self.vote}); start a new round")
        if not self.can_vote:
            raise ValueError("voting opens when both replies have finished without an error")
        record_vote(
            engine,
            round_id=self.round_id,
            model_a=self.left.model,
            model_b=self.right.model,
            left_model=self.left.model,
            vote=choice,
            conversation_a=self.left.dialogue,
            conversation_b=self.right.dialogue,
            mode=self.mode,
            model_a_version=self.left.version,
            model_b_version=self.right.version,
            started_at=self.started_at,
            session_id=session_id,
        )
        self.vote = choice


def stream_both(client: BackendClient, round_: ArenaRound, user_id: str | None) -> Iterator[None]:
    """Run both sides' streams in threads; yield after every delta so the UI redraws both panels."""
    events: queue.Queue[tuple[Side, str | Reply | Exception | None]] = queue.Queue()

    def pump(side: Side) -> None:
        try:
            for part in client.stream(side.model, side.dialogue, user_id=user_id):
                events.put((side, part))
        except BackendError as err:
            events.put((side, err))
        events.put((side, None))

    sides = [round_.left, round_.right]
    for side in sides:
        side.text, side.reply, side.done, side.error = "", None, False, ""
        threading.Thread(target=pump, args=(side,), daemon=True).start()
    finished = 0
    while finished < len(sides):
        side, part = events.get()
        if part is None:
            finished += 1
            side.done = True
        elif isinstance(part, Exception):
            side.error = str(part)
        elif isinstance(part, Reply):
            side.text, side.reply = part.text, part
            side.dialogue.turns.append(
                Turn(role="system", text=part.text, items=part.item_ids[:10])
            )
        else:
            side.text += part
        yield


def start_round(
    client: BackendClient, mode: str, model_a: str | None, model_b: str | None, rng: random.Random
) -> ArenaRound:
    """A new round: named mode uses the picked models, blind mode draws a pair with random sides."""
    infos = {m.name: m for m in client.models() if m.status == "ready"}
    if mode == "named":
        if not model_a or not model_b or model_a == model_b:
            raise ValueError("pick two different models for a named round")
        missing = [m for m in (model_a, model_b) if m not in infos]
        if missing:
            raise ValueError(f"not available on the backend: {', '.join(missing)}")
        left, right = model_a, model_b
    else:
        left, right = draw_pair(sorted(infos), rng)
    return ArenaRound(
        left=Side(model=left, version=infos[left].version),
        right=Side(model=right, version=infos[right].version),
        mode=mode,
    )


# ----------------------------------------------------------------------------- Gradio tab


def _messages(side: Side) -> list[dict[str, str]]:
    shown = chat_messages(side.dialogue)
    if not side.done and (side.text or side.error):
        shown.append({"role": "assistant", "content": side.text})
    if side.error:
        shown.append({"role": "assistant", "content": f"⚠️ {side.error}"})
    return shown


def build_arena_tab(client: BackendClient, engine, model_names: list[str]) -> None:
    """The Arena tab: mode, model pickers, two chat panels, votes, regenerate, new round, export."""
    rng = random.Random()
    state = gr.State(None)
    with gr.Row():
        mode = gr.Radio(["blind", "named"], value="blind", label="Mode", elem_id="arena-mode")
        pick_a = gr.Dropdown(
            model_names, label="Model A (named mode)", visible=False, elem_id="arena-pick-a"
        )
        pick_b = gr.Dropdown(
            model_names, label="Model B (named mode)", visible=False, elem_id="arena-pick-b"
        )
    with gr.Row():
        with gr.Column():
            chat_a = gr.Chatbot(label="Model A", height=360, elem_id="arena-chat-a")
            items_a = gr.HTML(elem_id="arena-items-a")
        with gr.Column():
            chat_b = gr.Chatbot(label="Model B", height=360, elem_id="arena-chat-b")
            items_b = gr.HTML(elem_id="arena-items-b")
    with gr.Row():
        text = gr.Textbox(
            placeholder="Ask both models…", show_label=False, scale=4, elem_id="arena-input"
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
    with gr.Row():
        vote_buttons = [
            gr.Button(label, interactive=False, elem_id=f"vote-{code}")
            for label, code in VOTES.items()
        ]
    status = gr.Markdown(elem_id="arena-status")
    with gr.Row():
        regenerate = gr.Button("Regenerate", elem_id="arena-regenerate")
        new_round = gr.Button("New round", elem_id="arena-new")
        export = gr.Button("Export to annotation", interactive=False, elem_id="arena-export")

    def view(round_: ArenaRound | None, message: str = ""):
        if round_ is None:
            return (
                [None, gr.update(value=[], label="Model A"), gr.update(value=[], label="Model B")]
                + ["", ""]
                + [gr.update(interactive=False)] * len(VOTES)
                + [message, gr.update(interactive=False)]
            )
        label_a, label_b = round_.labels()
        return [
            round_,
            gr.update(value=_messages(round_.left), label=label_a),
            gr.update(value=_messages(round_.right), label=label_b),
            # No scores: their scale (counts vs cosines) would give a blind pair away.
            *(
                item_cards(s.reply, {}, top=5, scores=False) if s.reply else ""
                for s in (round_.left, round_.right)
            ),
            *[gr.update(interactive=round_.can_vote)] * len(VOTES),
            message,
            gr.update(interactive=round_.vote is not None),
        ]

    outputs = [state, chat_a, chat_b, items_a, items_b, *vote_buttons, status, export]

    def on_send(message: str, round_: ArenaRound | None, mode_: str, a: str | None, b: str | None):
        message = (message or "").strip()
        if not message:
            yield view(round_, "Type a message first.")
            return
        try:
            if round_ is None or round_.vote is not None:
                round_ = start_round(client, mode_, a, b, rng)
        except (ValueError, BackendError) as err:
            yield view(round_, f"**Cannot start a round:** {err}")
            return
        for side in (round_.left, round_.right):
            side.dialogue.turns.append(Turn(role="user", text=message))
        yield view(round_, "Both models are answering…")
        for _ in stream_both(client, round_, None):
            yield view(round_, "Both models are answering…")
        errors = [
            f"{name}: {s.error}" for name, s in (("A", round_.left), ("B", round_.right)) if s.error
        ]
        yield view(
            round_,
            "One side failed, so this round cannot be voted: " + "; ".join(errors)
            if errors
            else "Vote when ready.",
        )

    def on_vote(choice: str):
        def handler(round_: ArenaRound | None):
            if round_ is None:
                return view(None, "Start a round first.")
            try:
                round_.cast(engine, choice, session_id=round_.round_id)
            except (AlreadyVoted, ValueError) as err:
                return view(round_, f"**Vote refused:** {err}")
            except OperationalError:
                log.exception("vote of round %s not stored", round_.round_id)
                return view(round_, BUSY_VOTE)
            return view(
                round_,
                f"Thanks! You voted **{choice}**. Model A was **{round_.left.model}**, Model B was **{round_.right.model}**.",
            )

        return handler

    def on_regenerate(round_: ArenaRound | None):
        if round_ is None or round_.vote is not None or not round_.left.dialogue.turns:
            yield view(round_, "Nothing to regenerate in an unvoted round.")
            return
        for side in (round_.left, round_.right):
            if side.dialogue.turns[-1].role == "system":
                side.dialogue.turns.pop()
        for _ in stream_both(client, round_, None):
            yield view(round_, "Regenerating…")
        yield view(round_, "Vote when ready.")

    def on_export(round_: ArenaRound | None):
        if round_ is None or round_.vote is None:
            return view(round_, "Vote first, then export the round.")
        task = export_arena_round(engine, round_.round_id)
        return view(round_, f"Queued as pairwise annotation task #{task.id} in campaign “arena”.")

    mode.change(lambda m: [gr.update(visible=m == "named")] * 2, mode, [pick_a, pick_b])
    send.click(on_send, [text, state, mode, pick_a, pick_b], outputs, api_name="arena_send").then(
        lambda: "", None, text
    )
    text.submit(on_send, [text, state, mode, pick_a, pick_b], outputs).then(lambda: "", None, text)
    for button, code in zip(vote_buttons, VOTES.values(), strict=True):
        button.click(on_vote(code), state, outputs, api_name=f"arena_vote_{code}")
    regenerate.click(on_regenerate, state, outputs)
    new_round.click(lambda: view(None, "New round: send a message."), None, outputs)
    export.click(on_export, state, outputs, api_name="arena_export")
