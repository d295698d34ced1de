"""`crs train llmcrs`: the supervised warm start of sub-task detection on labelled turns.

A 135M model does not detect sub-tasks zero-shot (on the README's requests it picked Item Detail
Search for "a scary horror film"), so before RLPF (§4) the LLM's LoRA weights learn the choice it
is asked for at inference: the detection prompt, each sub-task's name scored as a continuation,
a cross-entropy over the four scores against the turn's label (llm-redial's gold goals where the
dialogue has them, the silver rules of `labels.py` elsewhere). Classes are drawn in turn, since
recommendation turns outnumber the rest. The run checkpoints every `save_every` steps and
continues from there when started again with the same command; the adapter with the best dev
accuracy is kept.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from backend.data.base import Dataset
from backend.llm import LocalLLM, option_logprobs, with_lora
from backend.models.llmcrs.config import SUBTASKS, LLMCRSConfig, default_adapter
from backend.models.llmcrs.labels import gold_subtask, silver_subtask
from backend.models.llmcrs.prompts import Demo, detection_prompt, draw_demos
from backend.progress import ProgressBar
from backend.registry import save_run_files
from backend.settings import get_settings
from backend.train.resume import restore_training_state, save_training_state
from backend.types import Dialogue

log = logging.getLogger(__name__)
KEYS = [task.key for task in SUBTASKS]


@dataclass
class TrainSettings:
    """The warm start's schedule (the paper gives none for it; RLPF's Adam lr is 5e-5)."""

    steps: int = 200
    batch_size: int = 4
    lr: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 16
    eval_every: int = 50
    save_every: int = 20
    dev_examples: int = 120


def labelled_turns(dialogues: list[Dialogue]) -> list[tuple[Dialogue, str]]:
    """(context, sub-task) of every system turn with a label: gold goals, else the silver rules."""
    found = []
    for dialogue in dialogues:
        label = gold_subtask if dialogue.meta.get("goals") else silver_subtask
        for i in range(1, len(dialogue.turns)):
            task = label(dialogue, i)
            if task is not None:
                found.append((dialogue.prefix(i), task))
    return found


def balanced(examples: list[tuple[Dialogue, str]], n: int, rng: random.Random) -> list[int]:
    """n example indices, the sub-tasks taken in turn (each class drawn without replacement,
    reshuffled when used up)."""
    by_task: dict[str, list[int]] = {}
    for index, (_, task) in enumerate(examples):
        by_task.setdefault(task, []).append(index)
    pools: dict[str, list[int]] = {task: [] for task in by_task}
    picked: list[int] = []
    while len(picked) < n:
        for task in by_task:
            if not pools[task]:
                pools[task] = rng.sample(by_task[task], len(by_task[task]))
            picked.append(pools[task].pop())
    return picked[:n]


@dataclass
class Detector:
    """The LoRA-wrapped LLM and what the prompts need."""

    model: Any
    tokenizer: Any
    cfg: LLMCRSConfig
    demos: list[Demo]

    def scores(self, context: Dialogue) -> torch.Tensor:
        prompt = detection_prompt(context, self.demos, self.cfg)
        labels = [f" {task.name}" for task in SUBTASKS]
        return option_logprobs(self.model, self.tokenizer, prompt, labels, self.cfg.length_norm)[0]

    def accuracy(self, examples: list[tuple[Dialogue, str]]) -> dict[str, Any]:
        self.model.eval()
        confusion: Counter[tuple[str, str]] = Counter()
        with torch.inference_mode():
            for context, gold in examples:
                confusion[gold, KEYS[int(self.scores(context).argmax())]] += 1
        self.model.train()
        right = sum(n for (g, p), n in confusion.items() if g == p)
        return {
            "accuracy": right / max(len(examples), 1),
            "n": len(examples),
            "confusion": {f"{g}->{p}": n for (g, p), n in sorted(confusion.items())},
        }


@dataclass
class RunState:
    """Where the run stands; saved atomically so that a stop loses at most `save_every` steps."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    best_step: int = -1


def train_llmcrs(
    dataset: Dataset,
    cfg: LLMCRSConfig,
    settings: TrainSettings,
    out_dir: Path | None = None,
) -> Path:
    """Warm-start the detection of sub-tasks on ``dataset``'s train split; returns the adapter
    folder (LoRA, config.json, metrics.json with the loss per step and the dev accuracy)."""
    began = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir or default_adapter(dataset.name))
    train = labelled_turns(dataset.splits.get("train", []))
    if not train:
        raise ValueError(
            f"{dataset.name}: no labelled system turn in the train split (llmcrs learns "
            "detection from dialogues: use redial or llm-redial)"
        )
    dev_all = labelled_turns(dataset.splits.get("dev", []))
    dev = [dev_all[i] for i in random.Random(cfg.seed).sample(range(len(dev_all)), len(dev_all))]
    dev = dev[: settings.dev_examples]
    base = LocalLLM(cfg.llm or get_settings().CRS_LLM, device=cfg.device)
    model = with_lora(base.model, settings.lora_r, settings.lora_alpha, 0.0)
    model.train()
    demos = draw_demos(dataset.splits.get("train", []), cfg.demos, cfg.seed)
    detector = Detector(model, base.tokenizer, cfg, demos)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    state = RunState()
    rng = random.Random(cfg.seed)
    resume = out_dir / "train_state.pt"
    run_config = {"model": asdict(cfg), "train": asdict(settings), "dataset": dataset.name}
    restored = restore_training_state(resume, model, optimizer, rng, run_config)
    if restored is not None:
        state = RunState(**restored)
        log.info("llmcrs: resuming at step %d of %d", state.step, settings.steps)

    def save_state() -> None:
        save_training_state(resume, model, optimizer, rng, asdict(state), run_config)

    def evaluate() -> None:
        result = detector.accuracy(dev) if dev else {"accuracy": 0.0, "n": 0}
        state.dev.append({"step": state.step, **result})
        log.info("llmcrs step %d: dev detection accuracy %.3f", state.step, result["accuracy"])
        if result["accuracy"] >= state.best:  # a tie goes to the more trained adapter
            state.best, state.best_step = result["accuracy"], state.step
            model.save_pretrained(out_dir)

    # Made first, so that the server shows the run (0 of N) while the untrained model is evaluated.
    bar = ProgressBar(total=settings.steps, initial=state.step, desc="llmcrs", unit="step")
    if state.step == 0 and not state.dev:
        evaluate()  # the untrained model, for the record and as the first candidate
    start = time.perf_counter()
    for step in range(state.step + 1, settings.steps + 1):
        batch = [train[i] for i in balanced(train, settings.batch_size, rng)]
        loss = torch.stack(
            [
                F.cross_entropy(detector.scores(context)[None], torch.tensor([KEYS.index(task)]))
                for context, task in batch
            ]
        ).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        state.step = step
        state.losses.append(round(loss.item(), 5))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % settings.eval_every == 0 or step == settings.steps:
            evaluate()
        if step < settings.steps and (
            step % settings.save_every == 0 or step % settings.eval_every == 0
        ):
            save_state()
    bar.close()
    seconds = time.perf_counter() - start
    counts = Counter(task for _, task in train)
    metrics = {
        "loss": state.losses,
        "dev": state.dev,
        "best_step": state.best_step,
        "best_dev_accuracy": state.best,
        "train_turns": dict(counts),
        "dev_majority_baseline": (
            max(Counter(t for _, t in dev).values()) / len(dev) if dev else 0.0
        ),
        "seconds_this_run": seconds,
        "total_seconds": time.perf_counter() - began,
    }
    saved_config = {"model": "llmcrs", "dataset": dataset.name, **asdict(cfg), **asdict(settings)}
    save_run_files(out_dir, saved_config, metrics)
    resume.unlink(missing_ok=True)
    return out_dir
