"""LLMCRS (`llmcrs`): an LLM that manages sub-tasks and expert models (the paper's §3).

Each turn runs four stages, each a step of the reply's trace:
1. sub-task detection (§3.1): which of Table 1's sub-tasks the turn calls for;
2. model matching (§3.2): which expert, by ID, from the [ID, description] list of that sub-task;
3. execution (§3.3): the expert runs (recommenders are the registered models);
4. response generation (§3.4): the LLM answers from a summary of the above.

The local 135M model is never trusted to free-generate facts: its decisions are read by scoring
the allowed options, and its reply opens with the expert's grounded sentence, to which it may add
one sentence that is checked against the item's facts. With an endpoint (the quality path) the
decisions are parsed from its answers and it writes the reply from the summary.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.data import load_dataset
from backend.llm import GenerationConfig, get_llm
from backend.models.llm_zero_shot import LLMZeroShot, LLMZeroShotConfig, checked_clause
from backend.models.llmcrs.choice import Choice, Chooser
from backend.models.llmcrs.config import SUBTASK, SUBTASKS, LLMCRSConfig, SubTask, default_adapter
from backend.models.llmcrs.experts import (
    BUILTIN,
    CATALOG,
    ExpertOutput,
    ExpertPool,
    recommendation_experts,
)
from backend.models.llmcrs.prompts import (
    DETECT_LEAD,
    MATCH_LEAD,
    detection_prompt,
    draw_demos,
    matching_prompt,
    response_prompt,
)
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, Peers, fresh_items, register, timed
from backend.types import Dialogue, Item, Reply, ScoredItem, TraceStep, UserHistory

_NARRATES = re.compile(r"\b(the user|user's|request|sub-task|expert|assistant|dialogue)\b", re.I)


@dataclass
class Stage:
    """One stage's record for the trace: its prompt, raw answer, decision and time."""

    name: str
    prompt: str = ""
    raw: Any = None
    decision: Any = None
    seconds: float = 0.0
    tokens: int = 0  # LLM tokens read and written
    extra: dict[str, Any] = field(default_factory=dict)

    def step(self) -> TraceStep:
        return TraceStep(
            name=f"{self.name} → {self.decision}",
            input=self.prompt,
            output={"decision": self.decision, "raw": self.raw, **self.extra},
            seconds=self.seconds,
        )


@register
class LLMCRS(CRSModel):
    name = "llmcrs"
    description = (
        "LLMCRS: an LLM that detects the sub-task of each turn (preference elicitation, "
        "recommendation, explanation, item details), picks an expert model for it by its "
        "description, runs it, and answers from a summary of the result."
    )
    config_class = LLMCRSConfig

    def __init__(self, dataset, config: LLMCRSConfig | None = None):
        super().__init__(dataset, config)
        cfg = self.config
        self.adapter = self._adapter(dataset.name)
        self.llm = get_llm(cfg.llm or None, base_url=cfg.base_url or None, adapter=self.adapter)
        remote = bool(getattr(self.llm, "base_url", None))
        self.calibrate = cfg.calibrate and self.adapter is None
        if self.adapter is not None:  # options are scored as the adapter was trained to score them
            trained = json.loads((self.adapter / "config.json").read_text())
            cfg.length_norm = bool(trained.get("length_norm", False))
        mode = cfg.choice if cfg.choice != "auto" else ("json" if remote else "score")
        self.chooser = Chooser(self.llm, mode, mean=cfg.length_norm)
        self.free_response = remote  # an endpoint writes the reply; the local model is grounded
        self.experts = ExpertPool(dataset)
        self.recommenders = recommendation_experts(cfg.experts, exclude=self.name)
        # An adapter trained on another dataset reads the demonstrations it was trained with.
        source = (
            load_dataset(cfg.trained_on) if cfg.trained_on not in ("", dataset.name) else dataset
        )
        self.demos = draw_demos(source.splits.get("train", []), cfg.demos, cfg.seed)
        self.counts: Counter[str] = Counter()  # invalid answers, experts that could not run
        self._alone: LLMZeroShot | None = None  # "w/o E": the LLM over retrieved candidates
        trained = f", detection trained: {self.adapter.name}" if self.adapter else ""
        self.version = f"{self.llm.name} ({mode}{trained})"

    def _adapter(self, dataset_name: str) -> Path | None:
        """The detection warm start's adapter, if there is one (see `LLMCRSConfig.adapter`)."""
        cfg = self.config
        if cfg.adapter == "none" or (cfg.base_url and not cfg.adapter):
            return None
        path = Path(cfg.adapter) if cfg.adapter else default_adapter(cfg.trained_on or dataset_name)
        if (path / "adapter_config.json").is_file():
            return path
        if cfg.adapter or cfg.trained_on:  # asked for by name: missing is an error (the server
            # then trains it in the background when its entry has a `train` recipe)
            raise FileNotFoundError(
                f"no llmcrs adapter at {path}; train one with `crs train llmcrs --dataset "
                f"{cfg.trained_on or dataset_name}`"
            )
        return None

    def use_peers(self, peers: Peers) -> None:
        self.experts.peers = peers

    # ------------------------------------------------------------------ the four stages

    def detect(self, dialogue: Dialogue) -> tuple[SubTask, Stage]:
        """§3.1: the sub-task, scored (local) or parsed (endpoint) among Table 1's."""
        began = time.perf_counter()
        if not self.config.manage:  # w/o M: no management, every turn is a recommendation
            return SUBTASK["recommend"], Stage("1 sub-task detection", decision="Recommendation")
        prompt = detection_prompt(dialogue, self.demos, self.config)
        options = {task.key: task.name for task in SUBTASKS}
        null = detection_prompt(None, self.demos, self.config) if self.calibrate else ""
        choice = self.chooser.choose(
            prompt, DETECT_LEAD, options, self.config.default_subtask, null_prompt=null
        )
        self._count(choice, "detection")
        stage = Stage("1 sub-task detection", prompt, choice.raw, SUBTASK[choice.decision].name)
        stage.extra = {"scores": choice.scores, "valid": choice.valid}
        stage.seconds, stage.tokens = time.perf_counter() - began, choice.tokens
        return SUBTASK[choice.decision], stage

    def match(self, task: SubTask) -> tuple[list[tuple[str, str]], Stage]:
        """§3.2: the experts for ``task``, best first (the LLM's pick, then the rest by score)."""
        began = time.perf_counter()
        if task.key == "recommend":
            experts = [e for e in self.recommenders if self.experts.can_run(e[0])]
            if not self.config.manage:  # w/o M: one expert, always
                experts = [e for e in experts if e[0] == self.config.single_expert]
        else:
            experts = BUILTIN[task.key]
        if not experts:
            stage = Stage("2 model matching", decision=CATALOG, raw="no expert: the catalog")
            return [], stage
        prompt = matching_prompt(task, experts)
        if len(experts) == 1:
            stage = Stage("2 model matching", prompt, "the only expert", experts[0][0])
            return experts, stage
        options = {expert_id: expert_id for expert_id, _ in experts}
        null = matching_prompt(None, experts) if self.calibrate else ""
        choice = self.chooser.choose(prompt, MATCH_LEAD, options, experts[0][0], null_prompt=null)
        self._count(choice, "matching")
        scores = choice.scores or {choice.decision: 0.0}
        ranked = sorted(experts, key=lambda e: (e[0] != choice.decision, -scores.get(e[0], -1e9)))
        stage = Stage("2 model matching", prompt, choice.raw, choice.decision)
        stage.extra = {"scores": choice.scores, "valid": choice.valid}
        stage.seconds, stage.tokens = time.perf_counter() - began, choice.tokens
        return ranked, stage

    def execute(
        self,
        task: SubTask,
        experts: list[tuple[str, str]],
        dialogue: Dialogue,
        history: UserHistory | None,
    ) -> tuple[ExpertOutput, tuple[str, str] | None, Stage]:
        """§3.3: run the matched expert (the next one if it cannot run); every sub-task also
        gets a ranking, so that the reply can show films whatever it does."""
        began = time.perf_counter()
        stage = Stage("3 execution")
        skipped: dict[str, str] = {}
        ranking, used, where = self._rank(task, experts, dialogue, history, skipped)
        focus = self._focus(dialogue, task)
        if task.key == "recommend":
            first = self.catalog[ranking[0].item_id] if ranking else None
            output = ExpertOutput(
                recommendation_text([self.catalog[s.item_id] for s in ranking[:3]]),
                ranking,
                first,
                recommends=True,
            )
        elif task.key == "elicit":
            output = self.experts.ask_attribute(dialogue, ranking)
        elif task.key == "explain" and focus is not None:
            output = self.experts.explain(dialogue, focus)
        elif task.key == "detail" and focus is not None:
            output = self.experts.detail(dialogue, focus)
        else:  # nothing named yet to explain or describe: recommend instead
            output = ExpertOutput(
                recommendation_text([self.catalog[s.item_id] for s in ranking[:3]]),
                recommends=True,
                trace=[TraceStep(name="fallback", output="no movie named yet: recommended")],
            )
        output.items = output.items or ranking
        expert = next((e for e in experts if e[0] == used), None)
        if task.key != "recommend":
            expert = experts[0] if experts else None
        stage.decision = expert[0] if expert else CATALOG
        stage.prompt = {
            "sub-task": task.name,
            "recommender": f"{used} ({where})",
            "skipped": skipped,
        }
        stage.raw = output.text
        stage.extra = {"top": [s.title for s in output.items[:5]]}
        stage.extra.update({s.name: s.output for s in output.trace})
        stage.seconds = time.perf_counter() - began
        return output, expert, stage

    def respond_text(
        self,
        dialogue: Dialogue,
        task: SubTask,
        expert: tuple[str, str] | None,
        output: ExpertOutput,
    ) -> tuple[str, Stage]:
        """§3.4: the reply from the summary. An endpoint writes the whole reply; locally the
        expert's grounded words are the reply, to which (``local_clause``) the 135M LLM may add
        one sentence that passes a fact check."""
        began = time.perf_counter()
        prompt = response_prompt(dialogue, task, expert, output.text, self.config)
        messages = [{"role": "user", "content": prompt}]
        gen = GenerationConfig(max_new_tokens=self.config.max_new_tokens, temperature=0.0)
        if self.free_response:
            raw = self.llm.chat(messages, gen).strip()
            text = raw or output.text
            if output.focus is not None and task.key == "recommend":
                title = output.focus.display_title
                text = text if title in text else f"I'd suggest {title}. {text}"
            stage = Stage("4 response", prompt, raw, "written from the summary")
        elif not self.config.local_clause:
            text, raw = output.text, None
            stage = Stage(
                "4 response", prompt, raw, "expert's words (the local LLM does not write)"
            )
        else:
            lead = output.text
            raw = self.llm.chat_batch([messages], gen, prefixes=[lead + " "])[0]
            added, refused = self._clause(raw[len(lead) :], output.focus, dialogue)
            text = f"{lead} {added}".strip()
            stage = Stage(
                "4 response",
                prompt,
                raw,
                "expert's words + a checked sentence" if added else "expert's words",
            )
            stage.extra = {"refused": refused} if refused else {}
        if raw is not None:
            usage = self.llm.last_usage
            stage.tokens = usage.prompt_tokens + usage.completion_tokens
        stage.seconds = time.perf_counter() - began
        return text, stage

    # ------------------------------------------------------------------ the turn

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        task, detected = self.detect(dialogue)
        experts, matched = self.match(task)
        output, expert, executed = self.execute(task, experts, dialogue, history)
        text, written = self.respond_text(dialogue, task, expert, output)
        items = fresh_items(output.items, set(dialogue.mentioned_items()), self.config.top_k)
        if not output.recommends and items and items[0].title not in text:
            text += f" Meanwhile, you might like {items[0].title}."  # every turn shows films
        stages = (detected, matched, executed, written)
        return Reply(
            text=text,
            items=items,
            recommends=output.recommends,
            trace=[s.step() for s in stages],
            prompt_tokens=sum(s.tokens for s in stages),  # read and written, every stage
        )

    # ------------------------------------------------------------------ helpers

    def _rank(
        self,
        task: SubTask,
        experts: list[tuple[str, str]],
        dialogue: Dialogue,
        history: UserHistory | None,
        skipped: dict[str, str],
    ) -> tuple[list[ScoredItem], str, str]:
        """A ranking, the recommender that made it and where it ran: the first recommender that runs (the matched one for Recommendation;
        `single_expert` for the other sub-tasks, whose experts work on candidates)."""
        if not self.config.use_experts:  # w/o E: the LLM alone over retrieved candidates
            return self._llm_alone().respond(dialogue, history).items, "the LLM alone", "here"
        order = [e[0] for e in experts] if task.key == "recommend" else []
        order += [self.config.single_expert] + [
            e[0] for e in self.recommenders if self.experts.can_run(e[0])
        ]
        for name in dict.fromkeys(order):
            if self.experts.unavailable(name):
                skipped[name] = self.experts.unavailable(name)
                continue
            try:
                reply, where = self.experts.recommend(name, dialogue, history)
            except Exception as err:  # noted in the trace; the next expert answers
                self.counts[f"expert {name} failed"] += 1
                skipped[name] = f"{type(err).__name__}: {err}"
                continue
            if reply.items:
                return reply.items, name, where
        return [], "none", "-"

    def _llm_alone(self) -> LLMZeroShot:
        if self._alone is None:
            cfg = self.config
            self._alone = LLMZeroShot(
                self.dataset,
                LLMZeroShotConfig(
                    llm=cfg.llm,
                    base_url=cfg.base_url,
                    candidates=cfg.candidates,
                    scored=cfg.candidates,
                ),
            )
        return self._alone

    def _focus(self, dialogue: Dialogue, task: SubTask) -> Item | None:
        """The movie of Table 1's {item name}: for an Explanation the one the system last
        recommended (its first, the one its reply named), not one the user brought up; for a
        detail the last one named by anyone."""
        for turn in reversed(dialogue.turns):
            if turn.role == "system" and turn.items:
                named = turn.items[0]
            elif task.key == "detail" and turn.items:
                named = turn.items[-1]
            else:
                continue
            return self.catalog.get(named)
        return None  # Table 1's {item name} argument is unresolved: nothing to explain yet

    def _clause(self, raw: str, item: Item | None, dialogue: Dialogue) -> tuple[str, str]:
        """The LLM's added sentence if it passes llm-zero-shot's fact check and speaks to the
        user (a small model tends to narrate the prompt: "The user's request is ...")."""
        if item is None or not raw.strip():
            return "", "nothing to check against" if raw.strip() else ""
        sentence, refused = checked_clause(raw, item, dialogue)
        if sentence and _NARRATES.search(sentence):
            return "", "talks about the user or the task instead of to the user"
        return sentence, refused

    def _count(self, choice: Choice, stage: str) -> None:
        if not choice.valid:
            self.counts[f"{stage}: invalid answer, default taken"] += 1
