"""Generation with LLMs (§2.5.1): a filled template becomes a dialogue, whole or one utterance at a time.

``whole`` is the paper's way: one prompt (a static task description, the user's information and
the concretized template) and the LLM writes every utterance. ``turn`` asks for one utterance at a
time, the speaker role-played with that utterance's goals, and starts the utterances that must
name a movie (greetings, recommendations) with the title, so that a small local model keeps the
items right. Both batch dialogues into one LLM call per step.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backend.acts import SENTENCE_BREAK, ActChecker, intended_act
from backend.generate.goals import GOALS
from backend.generate.templates import FilledStep
from backend.llm import LLM, GenerationConfig, Messages

MODES = ("turn", "whole")
SPEAKER_NAMES = {"user": "User", "system": "Agent"}

STATIC_PROMPT = """You are writing a conversation between a User and an Agent (a movie recommender system) for a dataset of recommendation dialogues.
Requirements:
1. Write exactly {n} utterances, one per line, following the template below in order. Start each line with "User:" or "Agent:" as the template says.
2. Each utterance carries out the goals the template gives it.
3. Use the movie information to make the conversation concrete and natural, but do not copy it word for word.
4. Write every movie title exactly as the template writes it, with its year.
5. Each utterance has at most {max_words} words.
Write nothing but the {n} lines."""

PERSONAS = {
    "user": "You are a movie fan chatting with a movie recommender agent.",
    "system": "You are a friendly movie recommender agent chatting with a user.",
}
# How an utterance starts in turn mode, one drawn per utterance: those that must name their
# movie start with it, and the user's feedback and requests start with their act (issue 15: the
# 135M model, left free, accepted in 27 of 197 acceptance turns and rejected in 7 of 207).
# The first goal of a step with openers picks them; a reason outranks its plain feedback goal.
OPENERS = {
    "greet_likes": ("Hi! I recently watched {title}",),
    "greet_dislikes": ("Hi! I recently watched {title}",),
    "rec": ("How about {title}?", "You might like {title}.", "Have you seen {title}?",
            "I'd recommend {title}."),
    "reason_seen": ("No thanks, I've already seen {title}.", "I've seen {title} already, so I'll pass.",
                    "Thanks, but I've already watched {title}."),
    "reason_dislike_review": ("No thanks, I didn't enjoy {title}.",
                              "I'll pass, I didn't like {title} much.",
                              "Not for me: I found {title} disappointing."),
    "accept_reason": ("Sounds great, I'll watch {title} because", "Yes, I'll give {title} a try:"),
    "accept_no_reason": ("Sounds good, I'll watch {title}.", "Okay, I'll give {title} a try."),
    "accept_thanks": ("Thanks, I'll watch {title}!", "Thank you, I'll give {title} a try."),
    "express_interest": ("{title} sounds interesting!", "Ooh, {title} sounds good."),
    "ask_rec": ("Can you recommend a movie", "Could you suggest a film", "I'm looking for a movie"),
}  # fmt: skip
_OPENER_ORDER = ("reason_seen", "reason_dislike_review")
_LABEL = re.compile(
    r"^\s*(?:\d+[.)]\s*)?[*\[]*\s*(User|Agent|System|Assistant)\s*[*\]]*\s*[:：][*\]]*\s*", re.I
)
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*")


@dataclass
class Job:
    """One dialogue to write: its filled template, item texts, and a random source for openers."""

    steps: list[FilledStep]
    titles: dict[str, str]
    reviews: dict[str, str]
    profile_titles: dict[str, list[str]]  # "likes" / "dislikes" -> titles, for the whole prompt
    rng: random.Random


def clean_utterance(text: str, max_words: int) -> str:
    """One line, no speaker label, at most ``max_words`` words, cut after the last full sentence."""
    text = _LABEL.sub("", text.strip().split("\n")[0]).strip().strip('"').strip()
    words = text.split()
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def first_sentences(text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th sentence (all of it when shorter or ``n`` is 0)."""
    ends = [m.end() for m in SENTENCE_BREAK.finditer(text)]
    return text[: ends[n - 1]].strip() if n and len(ends) > n else text


def _instruction(step: FilledStep, job: Job) -> str:
    fields = {}
    if step.item_id:
        fields = {"item": f'"{job.titles[step.item_id]}"', "review": job.reviews[step.item_id]}
    return " ".join(GOALS[g].instruction.format(**fields) for g in step.goals)


def _opener(step: FilledStep, job: Job) -> str:
    goals = sorted(step.goals, key=lambda g: g not in _OPENER_ORDER)
    key = next((g for g in goals if g in OPENERS or g.startswith("rec_")), None)
    if key is None:
        return ""
    options = OPENERS["rec" if key.startswith("rec_") else key]
    if step.item_id is None and any("{title}" in o for o in options):
        return ""
    title = job.titles[step.item_id] if step.item_id else ""
    return job.rng.choice(options).format(title=title)


def turn_messages(
    step: FilledStep, job: Job, said: Sequence[str], context: int, max_words: int
) -> Messages:
    """The prompt for one utterance: the speaker's persona and goals, then the recent turns as chat."""
    system = (
        f"{PERSONAS[step.speaker]} Write your next message: one to three sentences, at most "
        f"{max_words} words, nothing else. In this message: {_instruction(step, job)}"
    )
    messages: Messages = [{"role": "system", "content": system}]
    start = max(0, len(said) - context)
    for past, text in zip(job.steps[start : len(said)], said[start:], strict=True):
        messages.append(
            {"role": "assistant" if past.speaker == step.speaker else "user", "content": text}
        )
    if len(messages) == 1 or messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": "(Write your message.)"})
    return messages


@dataclass
class ActCounts:
    """What the act check saw: utterances with an act, those passing at the first draft, at the end,
    and the drafts written again."""

    checked: int = 0
    first_pass: int = 0
    final_pass: int = 0
    rewrites: int = 0


def write_by_turn(
    llm: LLM,
    jobs: Sequence[Job],
    config: GenerationConfig,
    context: int = 3,
    max_words: int = 60,
    on_step: Callable[[int, int], None] | None = None,
    act_check: ActChecker | None = None,
    act_retries: int = 3,
    act_sentences: int = 2,
    counts: Sequence[ActCounts] | None = None,
) -> list[list[str]]:
    """Utterances of every job, written step by step; each step is one batched LLM call.

    With ``act_check``, a user utterance whose goals call for an act (accept, reject, ask for a
    recommendation) and that does not carry it is written again, up to ``act_retries`` times
    with new seeds; the last draft stays when none passes. Such an utterance is cut after
    ``act_sentences`` sentences first: the 135M model's later sentences drift from the act.
    ``counts`` (one per job) adds up what happened.
    ``on_step(i, n)`` is called before step i of n (for a progress display).
    """
    counts = counts if counts is not None else [ActCounts() for _ in jobs]
    said: list[list[str]] = [[] for _ in jobs]
    n_steps = max(len(j.steps) for j in jobs)
    for i in range(n_steps):
        if on_step:
            on_step(i, n_steps)
        active = [k for k, job in enumerate(jobs) if i < len(job.steps)]
        texts: dict[int, str] = {}
        todo = active
        for attempt in range(act_retries + 1 if act_check else 1):
            messages = [
                turn_messages(jobs[k].steps[i], jobs[k], said[k], context, max_words) for k in todo
            ]
            prefixes = [_opener(jobs[k].steps[i], jobs[k]) for k in todo]
            seed = config.seed + i + 1000 * attempt
            step_config = GenerationConfig(**{**config.__dict__, "seed": seed})
            acts = {k: intended_act(jobs[k].steps[i].goals) for k in todo}
            for k, text in zip(todo, llm.chat_batch(messages, step_config, prefixes), strict=True):
                texts[k] = clean_utterance(text, max_words)
                if act_check is not None and acts[k]:
                    texts[k] = first_sentences(texts[k], act_sentences)
            if act_check is None:
                break
            judged = [k for k in todo if acts[k]]
            ok = dict(
                zip(
                    judged,
                    act_check([texts[k] for k in judged], [acts[k] for k in judged]),
                    strict=True,
                )
            )
            for k in judged:
                if attempt == 0:
                    counts[k].checked += 1
                    counts[k].first_pass += ok[k]
                if attempt < act_retries and not ok[k]:
                    counts[k].rewrites += 1
            todo = [k for k in judged if not ok[k]]
            if not todo:
                break
        if act_check is not None:
            for k in active:
                counts[k].final_pass += bool(intended_act(jobs[k].steps[i].goals)) and k not in todo
        for k in active:
            said[k].append(texts[k])
    return said


def whole_messages(job: Job, max_words: int) -> Messages:
    """The paper's prompt: static task description + user information + concretized template."""
    info = {
        "liked movies": job.profile_titles["likes"],
        "disliked movies": job.profile_titles["dislikes"],
        "movie information": {
            job.titles[i]: job.reviews[i] for i in dict.fromkeys(s.item_id for s in job.steps) if i
        },
    }
    lines = [f"{n}. {SPEAKER_NAMES[s.speaker]}: {s.text}" for n, s in enumerate(job.steps, start=1)]
    prompt = (
        STATIC_PROMPT.format(n=len(job.steps), max_words=max_words)
        + "\n\nUser information:\n"
        + json.dumps(info, ensure_ascii=False, indent=1)
        + "\n\nTemplate:\n"
        + "\n".join(lines)
    )
    return [{"role": "user", "content": prompt}]


def parse_dialogue(text: str, max_words: int) -> list[str]:
    """Utterances of a whole generated dialogue: one per labelled line; unlabelled lines continue it."""
    utterances: list[str] = []
    for line in text.splitlines():
        if _LABEL.match(line):
            utterances.append(clean_utterance(line, max_words))
        elif line.strip() and utterances:
            utterances[-1] = clean_utterance(f"{utterances[-1]} {line.strip()}", max_words)
    return utterances


def write_whole(
    llm: LLM, jobs: Sequence[Job], config: GenerationConfig, max_words: int = 60
) -> list[list[str]]:
    """Each job's dialogue from one prompt, all jobs in one batched LLM call."""
    longest = max(len(j.steps) for j in jobs)
    # Room for every utterance at full length (about 1.4 tokens a word), or the last one is cut.
    budget = GenerationConfig(
        **{
            **config.__dict__,
            "max_new_tokens": max(config.max_new_tokens, int(longest * max_words * 1.4)),
        }
    )
    texts = llm.chat_batch([whole_messages(j, max_words) for j in jobs], budget)
    return [parse_dialogue(t, max_words) for t in texts]
