"""The three prompts of LLMCRS's Table 2 (detection, matching, response) and their demonstrations.

The wording follows the paper's Table 2; each slot is filled here. Decisions are read after a
fixed answer lead ("Sub-task:" / "Expert:"), so that the local model can be scored on each
allowed option and an endpoint can answer in JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from backend.models.llmcrs.config import SUBTASK, SUBTASKS, LLMCRSConfig, SubTask
from backend.models.llmcrs.labels import silver_subtask
from backend.types import Dialogue

DETECT_LEAD = "Sub-task:"
MATCH_LEAD = "Expert:"


@dataclass(frozen=True)
class Demo:
    """A demonstration (§3.1): a dialogue context and the sub-task it called for."""

    context: str
    subtask: str


# Used when the dataset has no labelled training dialogues (MovieLens alone); ours, one per task.
BUILTIN_DEMOS = (
    Demo("User: Hi! I want to watch a movie tonight.", "elicit"),
    Demo("User: I love space adventures like Star Wars (1977). What should I watch?", "recommend"),
    Demo(
        "System: You might like Alien (1979).\nUser: Why would I like that one?",
        "explain",
    ),
    Demo("System: Try Heat (1995).\nUser: Who directed it?", "detail"),
)


def schema_text(task: SubTask) -> str:
    return json.dumps({"name": task.name, "arguments": task.arguments, "output": task.output})


NULL_CONTEXT = "N/A"  # the content-free context of contextual calibration


def turns_text(dialogue: Dialogue, turns: int, chars: int) -> str:
    """The last ``turns`` turns as "User: ..." lines, each cut to ``chars`` at a word."""
    lines = []
    for turn in dialogue.turns[-turns:]:
        text = turn.text if len(turn.text) <= chars else turn.text[:chars].rsplit(" ", 1)[0] + " …"
        lines.append(f"{'System' if turn.role == 'system' else 'User'}: {text}")
    return "\n".join(lines)


def context_text(dialogue: Dialogue | None, cfg: LLMCRSConfig) -> str:
    if dialogue is None:
        return NULL_CONTEXT
    return (
        turns_text(dialogue, cfg.context_turns, cfg.turn_chars) or "(the dialogue has not started)"
    )


def draw_demos(
    dialogues: Sequence[Dialogue], k: int, seed: int, turns: int = 1, chars: int = 120
) -> list[Demo]:
    """k demonstrations from training dialogues, labelled by the silver rules, the sub-tasks
    taken in turn so that each is shown; the built-in ones when no dialogue gives any."""
    if k <= 0:
        return []
    found: dict[str, list[Demo]] = {task.key: [] for task in SUBTASKS}
    for dialogue in dialogues:
        for i in range(1, len(dialogue.turns)):
            task = silver_subtask(dialogue, i)
            if task is not None:
                context = turns_text(dialogue.prefix(i), turns, chars)
                found[task].append(Demo(context, task))
    if not any(found.values()):
        return list(BUILTIN_DEMOS[:k])
    rng = random.Random(seed)
    pools = {key: rng.sample(demos, len(demos)) for key, demos in found.items() if demos}
    demos: list[Demo] = []
    while len(demos) < k and any(pools.values()):
        for key in list(pools):
            if pools[key] and len(demos) < k:
                demos.append(pools[key].pop())
    return demos


def detection_prompt(dialogue: Dialogue | None, demos: Sequence[Demo], cfg: LLMCRSConfig) -> str:
    """§3.1's prompt: the sub-task list, its schema (w/o SI drops it), demonstrations (w/o DI
    has none) and the dialogue context (None: the content-free one), ending with the lead."""
    names = ", ".join(task.name for task in SUBTASKS)
    parts = [
        "The AI assistant should analyze the dialogue context to detect which sub-task should be "
        f"selected. The sub-tasks include: {names}."
    ]
    if cfg.schema:
        schema = "; ".join(schema_text(task) for task in SUBTASKS)
        parts.append(
            "The selected sub-task needs to be represented by its sub-task schema. The sub-task "
            f"schema is: {schema}."
        )
    if demos:
        cases = "\n\n".join(f"{d.context}\n{DETECT_LEAD} {SUBTASK[d.subtask].name}" for d in demos)
        parts.append(f"There are some cases for your reference:\n\n{cases}")
    parts.append(f"The dialogue context is:\n{context_text(dialogue, cfg)}")
    parts.append(
        "From this dialogue context, which sub-task should be selected? The sub-task MUST be "
        "selected from the above list."
    )
    return "\n\n".join(parts) + f"\n{DETECT_LEAD}"


def matching_prompt(task: SubTask | None, experts: Sequence[tuple[str, str]]) -> str:
    """§3.2's prompt: the sub-task goal (None: the content-free one) and the [ID, description]
    list of its experts."""
    listing = "\n".join(f"[{expert_id}, {description}]" for expert_id, description in experts)
    return (
        "The AI assistant should select the most appropriate expert model to process the sub-task "
        "based on the sub-task goal and expert model description. The sub-task goal is to "
        f"{task.goal if task else NULL_CONTEXT}. The list of expert models is:\n{listing}\nPlease select one expert model. "
        "The expert model MUST be selected from the above list and represented by the ID."
        f"\n{MATCH_LEAD}"
    )


def response_prompt(
    dialogue: Dialogue,
    task: SubTask,
    expert: tuple[str, str] | None,
    output: str,
    cfg: LLMCRSConfig,
) -> str:
    """§3.4's prompt from the structured summary (sub-task, expert, output); "w/o SG" gives the
    expert's raw output instead."""
    context = context_text(dialogue, cfg)
    if not cfg.summary:
        return (
            f"The dialogue context is:\n{context}\n\nThe result is: {output}\n\n"
            "Please generate a response to the user."
        )
    who = f"{expert[0]}, {expert[1]}" if expert else "none (the movie database)"
    return (
        "With the dialogue context and the sub-task results, the AI assistant needs to generate "
        f"a response to the user. The dialogue context is:\n{context}\n\nThe sub-task results: "
        f"Sub-Task Name: {task.name}, Expert Model: {who}, and Sub-Task Output: {output}.\n\n"
        "Please generate a response to answer the user's request."
    )
