"""A simulated user for judging whole conversations (issue 15; LatentCRS §5.5, iEvaLM).

The user wants one hidden target movie. Each turn it first *chooses* an act by rule from what the
system just did (accept when the target is among the items shown, quit after the last turn,
reject what was shown, answer a question, or describe what it wants), and only then *writes* it:
with an LLM told the act and the target's attributes (genres, decade, a person), never its title,
or from templates. So one free prompt never decides the course of a conversation.

Known pitfall (SimpleUserSim, arXiv 2403.16416): the target leaks through the simulator's words,
which inflates success. Every utterance passes `leaks`: one that names the target or a near-copy
of its title is written again (up to ``retries`` times), then replaced by the act's template; both
are counted. The target lives in the simulator only; models get `Dialogue.prefix`, whose meta
carries no hidden state.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from rapidfuzz import fuzz

from backend.acts import ActChecker, Acts
from backend.llm import LLM, GenerationConfig
from backend.registry import CRSModel
from backend.types import Dialogue, Item, Reply, Turn, UserHistory


class Act(StrEnum):
    DESCRIBE = "describe"  # say what it wants, from the target's attributes
    ANSWER = "answer"  # answer the system's question, from the same attributes
    REJECT = "reject"  # turn down what was shown, with a reason
    ACCEPT = "accept"  # the target was shown
    QUIT = "quit"  # the last turn passed without the target


# The act check's labels each LLM-written act must carry (accept and quit come from templates);
# a rejection says what the user wants instead, so it may read as a request too.
CHECKED_ACTS: dict[Act, Acts] = {
    Act.DESCRIBE: "request",
    Act.ANSWER: "request",
    Act.REJECT: ("reject", "request"),
}


@dataclass
class SimulatorConfig:
    max_turns: int = 5  # system turns before the user gives up (LatentCRS, following iEvaLM)
    items_per_turn: int = 5  # items of a reply the user looks at
    retries: int = 3  # rewrites of a leaking utterance before its template replaces it
    near_copy: int = 90  # rapidfuzz partial ratio (0-100) at which a span counts as the title
    seed: int = 0


@dataclass
class Utterance:
    act: Act
    text: str
    rewrites: int = 0  # leaking drafts thrown away
    act_rewrites: int = 0  # drafts thrown away for missing their act (the act check)
    fallback: bool = False  # no draft passed: the template was used


# ----------------------------------------------------------------------------- the leak guard


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def leaks(text: str, target: Item, near_copy: int = 90) -> bool:
    """Whether ``text`` names ``target``: its title as words, or a near-copy of a longer title."""
    said = _plain(text)
    title = _plain(re.sub(r"\(\d{4}\)\s*$", "", target.title))
    if not title:
        return False
    if re.search(rf"\b{re.escape(title)}\b", said):
        return True
    # Fuzzy only for titles long enough that a close match cannot be an everyday phrase.
    return len(title) >= 8 and fuzz.partial_ratio(title, said) >= near_copy


# ----------------------------------------------------------------------------- acts


def choose_act(target: Item, reply: Reply, system_turns: int, cfg: SimulatorConfig) -> Act:
    """The user's next act after ``reply``, the system's ``system_turns``-th turn."""
    shown = reply.item_ids[: cfg.items_per_turn]
    if target.id in shown:
        return Act.ACCEPT
    if system_turns >= cfg.max_turns:
        return Act.QUIT
    if shown and reply.recommends:
        return Act.REJECT
    if reply.text.rstrip().endswith("?"):
        return Act.ANSWER
    return Act.DESCRIBE


def attributes(target: Item, rng: random.Random) -> str:
    """What the user may say about the target, as one noun phrase: its genres (or "movie"), then
    its decade and one person in shuffled order ("a crime and thriller movie with Al Pacino from
    the 1990s"); empty when the item has none of them."""
    head = " and ".join(g.lower() for g in target.genres[:2]) + " movie" if target.genres else ""
    said = []
    if target.year:
        said.append(f"from the {target.year // 10 * 10}s")
    people = [(role, name) for role, names in target.people.items() for name in names[:1]]
    if people:
        role, name = rng.choice(people)
        said.append(f"with {name}" if role != "director" else f"directed by {name}")
    rng.shuffle(said)
    phrase = " ".join([head or ("movie" if said else ""), *said]).strip()
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}" if phrase else ""


def template(act: Act, target: Item, rng: random.Random) -> str:
    """The act written from a template: the fallback, and the simulator without an LLM."""
    wants = attributes(target, rng) or "a good movie"
    if leaks(wants, target):  # a title made of the very words (a film called "Drama")
        wants = "a good movie"
    return {
        Act.DESCRIBE: f"I'm looking for {wants}.",
        Act.ANSWER: f"I'd like {wants}.",
        Act.REJECT: f"Not those, thanks. I want {wants}.",
        Act.ACCEPT: "Yes, that one is exactly what I was looking for. Thanks!",
        Act.QUIT: "I don't think I'll find it here. Thanks anyway.",
    }[act]


def _instruction(act: Act, target: Item, reply: Reply | None, rng: random.Random) -> str:
    wants = attributes(target, rng) or "a good movie"
    if act is Act.ANSWER and reply is not None:
        return (
            f'The assistant asked: "{reply.text.strip()}". Answer in one short sentence that you '
            f"want {wants}. Do not name any movie title."
        )
    if act is Act.REJECT and reply is not None:
        shown = ", ".join(s.title or s.item_id for s in reply.items[:3])
        return (
            f"The assistant suggested {shown}. In one short sentence, say no to them and say "
            f"that you want {wants} instead. Do not name any other movie title."
        )
    return f"In one short sentence, ask for {wants}. Do not name any movie title."


# ----------------------------------------------------------------------------- simulators


class UserSimulator(Protocol):
    """One simulated user; ``reply`` is None for its opening message."""

    def utter(self, target: Item, reply: Reply | None, system_turns: int) -> Utterance: ...


@dataclass
class TemplateSimulator:
    """Acts by rule, written from templates: deterministic and free."""

    config: SimulatorConfig = field(default_factory=SimulatorConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def utter(self, target: Item, reply: Reply | None, system_turns: int) -> Utterance:
        act = (
            Act.DESCRIBE if reply is None else choose_act(target, reply, system_turns, self.config)
        )
        return Utterance(act, template(act, target, self.rng))


@dataclass
class LLMSimulator:
    """Acts by rule, written by an LLM (local or an endpoint), checked by the leak guard and,
    with ``act_check``, by the act check: a draft that leaks or misses its act is rewritten."""

    llm: LLM
    config: SimulatorConfig = field(default_factory=SimulatorConfig)
    act_check: ActChecker | None = None
    persona: str = "You are a movie fan chatting with a movie recommender. Write only your line."

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def utter(self, target: Item, reply: Reply | None, system_turns: int) -> Utterance:
        cfg = self.config
        act = Act.DESCRIBE if reply is None else choose_act(target, reply, system_turns, cfg)
        if act in (Act.ACCEPT, Act.QUIT):  # nothing to say about the target: no leak possible
            return Utterance(act, template(act, target, self.rng))
        messages = [
            {"role": "system", "content": self.persona},
            {"role": "user", "content": _instruction(act, target, reply, self.rng)},
        ]
        leaked = missed = 0
        for rewrite in range(cfg.retries + 1):
            gen = GenerationConfig(
                max_new_tokens=48, temperature=0.7, top_p=0.9, seed=cfg.seed + rewrite, stop=["\n"]
            )
            text = self.llm.chat(messages, gen).strip().strip('"')
            if not text or leaks(text, target, cfg.near_copy):
                leaked += 1
            elif self.act_check and not self.act_check([text], [CHECKED_ACTS[act]])[0]:
                missed += 1
            else:
                return Utterance(act, text, rewrites=leaked, act_rewrites=missed)
        fallback = template(act, target, self.rng)
        return Utterance(act, fallback, rewrites=leaked, act_rewrites=missed, fallback=True)


# ----------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One simulated conversation: who said what, and whether the target came (S@K, AT)."""

    target: str
    turns: list[dict[str, object]] = field(default_factory=list)
    success_turn: int | None = None  # the system turn that showed the target (1-based)
    rewrites: int = 0
    act_rewrites: int = 0
    fallbacks: int = 0

    @property
    def system_turns(self) -> int:
        return sum(t["role"] == "system" for t in self.turns)


def run_episode(
    model: CRSModel,
    simulator: UserSimulator,
    target: Item,
    config: SimulatorConfig,
    history: UserHistory | None = None,
) -> Episode:
    """Let ``simulator`` talk to ``model`` until it accepts (the target was shown) or quits;
    ``history`` (without the target) goes to the model with every turn."""
    episode = Episode(target=target.id)
    user_id = history.user_id if history else None
    dialogue = Dialogue(id=f"sim-{target.id}", user_id=user_id)
    said = simulator.utter(target, None, 0)
    for system_turn in range(1, config.max_turns + 1):
        episode.rewrites += said.rewrites
        episode.act_rewrites += said.act_rewrites
        episode.fallbacks += said.fallback
        episode.turns.append({"role": "user", "act": said.act.value, "text": said.text})
        dialogue.turns.append(Turn(role="user", text=said.text))
        # The model sees the turns so far and nothing of the simulator's state.
        reply = model.respond(dialogue.prefix(len(dialogue.turns)), history)
        shown = reply.item_ids[: config.items_per_turn]
        episode.turns.append(
            {
                "role": "system",
                "text": reply.text,
                "items": shown,
                "tokens": reply.prompt_tokens + reply.completion_tokens,
            }
        )
        dialogue.turns.append(Turn(role="system", text=reply.text, items=shown))
        said = simulator.utter(target, reply, system_turn)
        if said.act in (Act.ACCEPT, Act.QUIT):
            episode.turns.append({"role": "user", "act": said.act.value, "text": said.text})
            if said.act is Act.ACCEPT:
                episode.success_turn = system_turn
            break
    return episode
