"""The Arena: each user turn goes to two models, both stream at once, the stakeholder votes.

Round logic (pairing, sides, vote rules) and the tab's actions (``Arena``: send, vote,
regenerate, new round, export) are plain Python, so they are tested without a browser; the Gradio
tab at the bottom only wires them to widgets.

Vote hygiene (see ``db.vote_hygiene``): a voter is a per-browser id kept in the browser's local
storage (or, without it, the page's session), capped at ``ArenaRules.daily_vote_cap`` votes a
day; a round whose reply names its own model is stored with an "identity_leak" flag; voting opens
after ``ArenaRules.min_user_turns`` user turns.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gradio as gr
from sqlalchemy.exc import OperationalError

from app.cards import chat_messages, escape_text, item_cards, items_of
from app.in_flight import CLICK_TIME_JS, InFlight
from backend.client import BackendClient, BackendError, RequestError, plain_message
from backend.server import Health
from backend.settings import get_settings
from backend.types import Dialogue, Reply, Turn
from db.arena import AlreadyVoted, export_arena_round, record_vote, stored_battles
from db.arena_pairing import draw_pair
from db.turn_stats import turn_record
from db.vote_hygiene import IDENTITY_LEAK, cap_reached, leaked_names

log = logging.getLogger(__name__)
VOTES = {"A better": "A", "B better": "B", "Tie": "tie", "Both bad": "both_bad"}
# Said instead of a database error; the round stays open, so the same click can be repeated.
BUSY_VOTE = "Your vote could not be saved just now because the database is busy. Please click it again in a few seconds."
VOTED = "This round is voted; send a message to start a new round."
ANSWERING = "Both models are answering…"
_POLL_S = 0.2  # how often a waiting stream looks at the round's cancel flag


@dataclass(frozen=True)
class ArenaRules:
    """How the arena takes votes (settings CRS_ARENA_DAILY_VOTE_CAP and CRS_ARENA_MIN_TURNS)."""

    daily_vote_cap: int = 50  # votes per voter in any 24 hours, as in Chatbot Arena's rate limits
    min_user_turns: int = 1  # user messages before the vote buttons open

    @classmethod
    def from_env(cls) -> ArenaRules:
        settings = get_settings()
        return cls(
            daily_vote_cap=settings.CRS_ARENA_DAILY_VOTE_CAP,
            min_user_turns=settings.CRS_ARENA_MIN_TURNS,
        )


@dataclass
class Side:
    model: str
    version: str = ""
    # Names the model goes by (served, registry, the reply's): saying one in a reply leaks it.
    names: tuple[str, ...] = ()
    dialogue: Dialogue = field(default_factory=lambda: Dialogue(id="arena"))
    text: str = ""  # the reply streaming in
    reply: Reply | None = None  # the last finished reply, for the item cards
    done: bool = False
    error: str = ""  # in words for the visitor
    records: list[dict[str, Any]] = field(default_factory=list)  # db.turn_stats, one per reply

    def system_text(self) -> str:
        return "\n".join(t.text for t in self.dialogue.turns if t.role == "system")


@dataclass
class ArenaRound:
    """One arena round: two sides, the mode, and the vote once cast."""

    left: Side
    right: Side
    mode: str = "blind"
    round_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    vote: str | None = None
    min_user_turns: int = 1
    # Set by "New round": streams of this round stop and never redraw the page again. A plain
    # bool (not a threading.Event) so that the round stays copyable like any Gradio state.
    cancelled: bool = False

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.left, self.right

    @property
    def user_turns(self) -> int:
        return sum(t.role == "user" for t in self.left.dialogue.turns)

    @property
    def turns_needed(self) -> int:
        """User messages still needed before voting opens."""
        return max(0, self.min_user_turns - self.user_turns)

    @property
    def can_vote(self) -> bool:
        """Once both replies finished without error, after enough turns, and only once."""
        return (
            self.vote is None
            and all(s.done and not s.error for s in self.sides)
            and bool(self.left.dialogue.turns)
            and self.left.dialogue.turns[-1].role == "system"
            and self.turns_needed == 0
        )

    def labels(self) -> tuple[str, str]:
        """What the two panels are called: hidden names in blind mode until the vote."""
        if self.mode == "blind" and self.vote is None:
            return "Model A", "Model B"
        return f"Model A: {self.left.model}", f"Model B: {self.right.model}"

    def flags(self) -> list[str]:
        """Hygiene flags of the round: "identity_leak" when a reply names its own model."""
        leaked = any(leaked_names(s.system_text(), s.names or (s.model,)) for s in self.sides)
        return [IDENTITY_LEAK] if leaked else []

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
            flags=self.flags(),
            turn_stats={"a": self.left.records, "b": self.right.records},
        )
        self.vote = choice


def stream_both(
    client: BackendClient,
    round_: ArenaRound,
    user_id: str | None,
    is_known: Callable[[str], bool | None] | None = None,
) -> Iterator[None]:
    """Run both sides' streams in threads; yield after every delta so the UI redraws both panels.

    Stops, without yielding again, as soon as ``round_.cancelled`` is set: a cancelled round's
    late deltas must not redraw a page that has moved on to a new round.
    """
    events: queue.Queue[tuple[Side, str | Reply | BackendError | None]] = queue.Queue()

    def pump(side: Side) -> None:
        try:
            for part in client.stream(side.model, side.dialogue, user_id=user_id):
                if round_.cancelled:
                    break  # leaving the loop closes the HTTP stream
                events.put((side, part))
        except BackendError as err:
            events.put((side, err))
        events.put((side, None))

    started = time.monotonic()
    before = {id(side): side.dialogue.model_copy(deep=True) for side in round_.sides}
    for side in round_.sides:
        side.text, side.reply, side.done, side.error = "", None, False, ""
        threading.Thread(target=pump, args=(side,), daemon=True).start()
    finished = 0
    while finished < len(round_.sides):
        try:
            side, part = events.get(timeout=_POLL_S)
        except queue.Empty:
            if round_.cancelled:
                return
            continue
        if round_.cancelled:
            return
        if part is None:
            finished += 1
            side.done = True
        elif isinstance(part, BackendError):
            log.warning("arena model %s failed: %s", side.model, part)
            side.error = plain_message(part)
        elif isinstance(part, Reply):
            items = part.item_ids[:10]
            side.text, side.reply = part.text, part
            side.names = tuple(dict.fromkeys((*side.names, part.model)))
            side.records.append(
                turn_record(
                    before[id(side)],
                    part.text,
                    items,
                    latency_s=time.monotonic() - started,
                    model_s=part.seconds,
                    tokens=part.completion_tokens,
                    is_known=is_known,
                )
            )
            side.dialogue.turns.append(Turn(role="system", text=part.text, items=items))
        else:
            side.text += part
        yield


def start_round(
    client: BackendClient,
    mode: str,
    model_a: str | None,
    model_b: str | None,
    rng: random.Random,
    battles: list[tuple[str, str, str]] | None = None,
    min_user_turns: int = 1,
) -> ArenaRound:
    """A new round: named mode uses the picked models, blind mode draws a pair with random sides.

    Blind pairs are drawn by ``db.arena_pairing.draw_pair`` from ``battles`` (the stored history).
    """
    infos = {m.name: m for m in client.models() if m.status == "ready"}
    if mode == "named":
        if not model_a or not model_b or model_a == model_b:
            raise ValueError("Pick two different models for a named round.")
        missing = [m for m in (model_a, model_b) if m not in infos]
        if missing:
            raise ValueError(f"Not available right now: {', '.join(missing)}. Pick another model.")
        left, right = model_a, model_b
    else:
        if len(infos) < 2:
            raise ValueError("The arena needs two models and fewer are ready right now.")
        left, right = draw_pair(sorted(infos), rng, battles or [])

    def side(name: str) -> Side:
        info = infos[name]
        return Side(model=name, version=info.version, names=tuple({name, info.model}))

    return ArenaRound(left=side(left), right=side(right), mode=mode, min_user_turns=min_user_turns)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _keep_chatting(round_: ArenaRound) -> str:
    return f"Keep chatting: {_plural(round_.turns_needed, 'more message')} before you can vote."


def _failure(round_: ArenaRound) -> str:
    """Which sides failed and why, in the visitor's words ("" when none did)."""
    failed = [(n, s.error) for n, s in (("A", round_.left), ("B", round_.right)) if s.error]
    if len(failed) == 2 and failed[0][1] == failed[1][1]:
        return f"Both models failed: {failed[0][1]}"
    return " ".join(f"Model {n} failed: {e}" for n, e in failed)


def _ready_status(round_: ArenaRound) -> str:
    return _keep_chatting(round_) if round_.turns_needed else "Vote when ready."


@dataclass
class _Snapshot:
    """A side as it stood before a message, to put back when the message fails."""

    turns: int
    reply: Reply | None
    records: int


class Arena:
    """The Arena tab's actions, without widgets: each yields or returns what the view shows."""

    def __init__(
        self,
        client: BackendClient,
        engine,
        rules: ArenaRules | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client, self.engine = client, engine
        self.rules = rules or ArenaRules()
        self.rng = rng or random.Random()
        self._health: Health | None = None
        self._known: dict[str, bool | None] = {}

    # ------------------------------------------------------------------ helpers

    def limits(self) -> Health | None:
        """The backend's request limits, asked once (None while it does not answer)."""
        if self._health is None:
            try:
                self._health = self.client.health()
            except BackendError as err:
                log.warning("arena: backend health not available: %s", err)
        return self._health

    def is_known(self, item_id: str) -> bool | None:
        """Whether the backend's catalog has ``item_id`` (None: could not tell); cached."""
        if item_id not in self._known:
            try:
                self.client.item(item_id)
                self._known[item_id] = True
            except RequestError as err:
                self._known[item_id] = False if err.status_code == 404 else None
            except BackendError:
                return None
        return self._known[item_id]

    def _new_round(self, mode: str, a: str | None, b: str | None) -> ArenaRound:
        battles = stored_battles(self.engine) if mode == "blind" else []
        return start_round(
            self.client, mode, a, b, self.rng, battles, min_user_turns=self.rules.min_user_turns
        )

    def _too_long(self, message: str, round_: ArenaRound | None) -> str:
        """Why ``message`` cannot be sent to ``round_`` ("" if it can), from the backend's limits."""
        limits = self.limits()
        if limits is None:
            return ""
        if len(message) > limits.max_message_chars:
            return f"Message too long: {limits.max_message_chars:,} characters at most."
        ongoing = round_ is not None and round_.vote is None and not round_.cancelled
        turns = len(round_.left.dialogue.turns) if ongoing else 0
        if turns + 1 > limits.max_turns:
            return "This conversation is at its length limit. Start a new round to go on."
        return ""

    # ------------------------------------------------------------------ actions

    def send(
        self, round_: ArenaRound | None, message: str, mode: str, a: str | None, b: str | None
    ) -> Iterator[tuple[ArenaRound | None, str, str | None]]:
        """Yields ``(round, status, textbox)``; textbox None leaves the box as it is.

        The typed text is cleared while both models answer and put back if the message fails,
        in which case it is also taken out of both dialogues (so the next message can succeed).
        """
        message = (message or "").strip()
        if not message:
            yield round_, "Type a message first.", None
            return
        if reason := self._too_long(message, round_):
            yield round_, reason, None
            return
        if round_ is None or round_.vote is not None or round_.cancelled:
            try:
                round_ = self._new_round(mode, a, b)
            except BackendError as err:
                log.warning("arena: cannot start a round: %s", err)
                yield None, plain_message(err), None
                return
            except ValueError as err:
                yield None, str(err), None
                return
        snapshots = [
            _Snapshot(len(s.dialogue.turns), s.reply, len(s.records)) for s in round_.sides
        ]
        for side in round_.sides:
            side.dialogue.turns.append(Turn(role="user", text=message))
        yield round_, ANSWERING, ""
        for _ in stream_both(self.client, round_, None, self.is_known):
            yield round_, ANSWERING, None
        if round_.cancelled:
            return
        failure = _failure(round_)
        if failure:
            for side, snapshot in zip(round_.sides, snapshots, strict=True):
                del side.dialogue.turns[snapshot.turns :]
                del side.records[snapshot.records :]
                side.reply, side.text, side.error, side.done = snapshot.reply, "", "", True
            yield (
                round_,
                f"{failure} Your message was not added; edit it or send it again.",
                message,
            )
            return
        yield round_, _ready_status(round_), None

    def vote(
        self, round_: ArenaRound | None, choice: str, voter: str | None
    ) -> tuple[ArenaRound | None, str]:
        """Cast ``choice`` for ``voter`` (a per-browser id) if the round and the cap allow it."""
        if round_ is None:
            return None, "Start a round first: send a message."
        if round_.vote is not None:
            return round_, VOTED
        if not round_.can_vote:
            if round_.turns_needed and not _failure(round_):
                return round_, _keep_chatting(round_)
            return round_, "Voting opens when both replies have finished without an error."
        try:
            if voter and cap_reached(
                self.engine, voter, self.rules.daily_vote_cap, datetime.now(UTC)
            ):
                return round_, (
                    f"You have cast {_plural(self.rules.daily_vote_cap, 'vote')} in the last 24 "
                    "hours, the most we take from one browser. Thank you! You can keep chatting."
                )
            round_.cast(self.engine, choice, session_id=voter)
        except (AlreadyVoted, ValueError) as err:
            log.warning("arena vote refused: %s", err)
            return round_, "This round was already voted. Send a message to start a new round."
        except OperationalError:
            log.exception("vote of round %s not stored", round_.round_id)
            return round_, BUSY_VOTE
        return round_, (
            f"Thanks! You voted **{choice}**. Model A was **{round_.left.model}**, "
            f"Model B was **{round_.right.model}**."
        )

    def regenerate(self, round_: ArenaRound | None) -> Iterator[tuple[ArenaRound | None, str]]:
        """Both models answer the last user message again (the round must not be voted)."""
        if round_ is None or not round_.left.dialogue.turns:
            yield round_, "Nothing to regenerate yet: send a message first."
            return
        if round_.vote is not None:
            yield round_, VOTED
            return
        for side in round_.sides:
            if side.dialogue.turns[-1].role == "system":
                side.dialogue.turns.pop()
                if side.records:
                    side.records.pop()
        yield round_, "Regenerating…"
        for _ in stream_both(self.client, round_, None, self.is_known):
            yield round_, "Regenerating…"
        if round_.cancelled:
            return
        failure = _failure(round_)
        if failure:
            yield round_, f"{failure} Click Regenerate to try again, or start a new round."
            return
        yield round_, _ready_status(round_)

    @staticmethod
    def new_round(round_: ArenaRound | None) -> tuple[None, str]:
        """Drop the round; its replies still streaming stop and never redraw the page."""
        if round_ is not None:
            round_.cancelled = True
        return None, "New round: send a message."

    def export(self, round_: ArenaRound | None) -> tuple[ArenaRound | None, str]:
        if round_ is None or round_.vote is None:
            return round_, "Vote first, then export the round."
        try:
            task = export_arena_round(self.engine, round_.round_id)
        except (LookupError, ValueError) as err:
            log.warning("arena round %s not exported: %s", round_.round_id, err)
            return round_, "This round cannot be queued for annotation."
        return round_, f"Queued as pairwise annotation task #{task.id} in campaign “arena”."


# ----------------------------------------------------------------------------- Gradio tab


def _messages(side: Side) -> list[dict[str, str]]:
    shown = chat_messages(side.dialogue)
    if not side.done and (side.text or side.error):
        shown.append({"role": "assistant", "content": escape_text(side.text)})
    if side.error:
        shown.append({"role": "assistant", "content": f"⚠️ {escape_text(side.error)}"})
    return shown


def _voter(visitor: str | None, request: gr.Request | None) -> str:
    """The per-browser voter id: the stored one, else a new one (the page stores it)."""
    if visitor:
        return visitor
    return uuid.uuid4().hex if request is None or not request.session_hash else request.session_hash


def build_arena_tab(
    client: BackendClient, engine, model_names: list[str], rules: ArenaRules | None = None
) -> tuple[gr.Dropdown, gr.Dropdown]:
    """The Arena tab: mode, model pickers, two chat panels, votes, regenerate, new round, export.

    Returns the two model pickers, whose choices the page refreshes as models become ready."""
    arena = Arena(client, engine, rules or ArenaRules.from_env())
    state = gr.State(None)
    flight = gr.State(InFlight)
    clicked_at = gr.Number(visible=False)  # set by CLICK_TIME_JS on each click
    # A per-browser id in local storage: the daily vote cap counts per browser, not per page load.
    visitor = gr.BrowserState(None, storage_key="crs-arena-visitor")
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
                item_cards(s.reply, items_of(client, s.reply, top=5), top=5, scores=False)
                if s.reply and s.done
                else ""
                for s in round_.sides
            ),
            *[gr.update(interactive=round_.can_vote)] * len(VOTES),
            message,
            gr.update(interactive=round_.vote is not None),
        ]

    outputs = [state, chat_a, chat_b, items_a, items_b, *vote_buttons, status, export]

    def on_send(
        message: str,
        round_: ArenaRound | None,
        mode_: str,
        a: str | None,
        b: str | None,
        flight: InFlight,
        clicked_at: float | None = None,
    ):
        with flight.streaming(clicked_at) as stream:
            for shown, status_line, box in arena.send(round_, message, mode_, a, b):
                if stream.abandoned:
                    _drop(shown)
                    return
                yield [*view(shown, status_line), gr.skip() if box is None else box]

    def on_vote(choice: str):
        def handler(round_: ArenaRound | None, visitor_id: str | None, request: gr.Request):
            voter = _voter(visitor_id, request)
            return [*view(*arena.vote(round_, choice, voter)), voter]

        return handler

    def on_regenerate(round_: ArenaRound | None, flight: InFlight):
        with flight.streaming() as stream:
            for shown, status_line in arena.regenerate(round_):
                if stream.abandoned:
                    _drop(shown)
                    return
                yield view(shown, status_line)

    def _drop(round_: ArenaRound | None) -> None:
        """New round was clicked: a round this stream began before the state held it goes too."""
        if round_ is not None:
            round_.cancelled = True

    def on_new_round(round_: ArenaRound | None, flight: InFlight, at: float | None):
        dropped = arena.new_round(round_)
        flight.reset(at)  # so no late update of the dropped round lands after this one
        return view(*dropped)

    send_inputs = [text, state, mode, pick_a, pick_b, flight, clicked_at]
    mode.change(lambda m: [gr.update(visible=m == "named")] * 2, mode, [pick_a, pick_b])
    send.click(on_send, send_inputs, [*outputs, text], api_name="arena_send", js=CLICK_TIME_JS)
    text.submit(on_send, send_inputs, [*outputs, text], js=CLICK_TIME_JS)
    for button, code in zip(vote_buttons, VOTES.values(), strict=True):
        button.click(
            on_vote(code), [state, visitor], [*outputs, visitor], api_name=f"arena_vote_{code}"
        )
    regenerate.click(on_regenerate, [state, flight], outputs)
    new_round.click(on_new_round, [state, flight, clicked_at], outputs, js=CLICK_TIME_JS)
    export.click(lambda r: view(*arena.export(r)), state, outputs, api_name="arena_export")
    return pick_a, pick_b
