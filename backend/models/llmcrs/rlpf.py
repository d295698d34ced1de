"""RLPF (§4): reinforcement learning from CRS performance feedback, on the LLM's LoRA weights.

The LLM is the policy; a solution S is its sub-task choice and, for a recommendation, its expert
choice, sampled from the softmax over the options' scores (the same prompts and scoring as at
inference). The execution's outcome is scored against the dialogue's real next turn: reward
R = λ·HIT + (1 − λ)·BLEU (Eq. 2), HIT = a gold movie of the turn among the top k shown when the
solution recommends, BLEU = BLEU-2 of the grounded reply against the real one. REINFORCE with a
moving average of past rewards as the baseline (Eq. 5): the loss is −(R − b)·log P(S). The paper
trains with Adam, lr 5e-5, weight decay 0.01 and batch size 1 (§5); it gives no λ, k or baseline
decay, so they are settings here.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.data.base import Dataset
from backend.eval.metrics import bleu
from backend.llm import LocalLLM, option_logprobs, with_lora
from backend.models.llmcrs.config import SUBTASK, SUBTASKS, default_adapter
from backend.models.llmcrs.experts import ExpertOutput
from backend.models.llmcrs.model import LLMCRS
from backend.models.llmcrs.prompts import detection_prompt, matching_prompt
from backend.progress import ProgressBar
from backend.registry import save_run_files
from backend.settings import get_settings
from backend.train.resume import restore_training_state, save_training_state
from backend.types import Dialogue, Turn

log = logging.getLogger(__name__)
KEYS = [task.key for task in SUBTASKS]


@dataclass
class RLPFSettings:
    steps: int = 200
    lr: float = 5e-5  # §5
    weight_decay: float = 0.01  # §5
    lam: float = 0.5  # λ of Eq. 2
    k: int = 10  # HIT@k
    beta: float = 0.9  # the baseline's moving-average decay (Eq. 5)
    eval_every: int = 50
    save_every: int = 20
    dev_examples: int = 40
    lora_r: int = 8
    lora_alpha: int = 16


@dataclass
class Episode:
    """A system turn to solve: its context and the real turn (the feedback's reference)."""

    key: str
    context: Dialogue
    reference: Turn


def episodes(dialogues: list[Dialogue]) -> list[Episode]:
    return [
        Episode(f"{d.id}:{i}", d.prefix(i), d.turns[i])
        for d in dialogues
        for i in range(1, len(d.turns))
        if d.turns[i].role == "system"
    ]


class Policy:
    """The LoRA-wrapped LLM choosing as the manager's prompts ask, with gradients; the manager
    (an `llmcrs` instance) supplies the prompts, the experts and the execution."""

    def __init__(self, model: Any, tokenizer: Any, manager: LLMCRS, settings: RLPFSettings):
        self.model, self.tokenizer, self.manager, self.settings = (
            model,
            tokenizer,
            manager,
            settings,
        )
        self.mean = manager.config.length_norm
        self._outcomes: dict[tuple[str, str, str], tuple[float, float]] = {}

    def experts(self) -> list[tuple[str, str]]:
        return [e for e in self.manager.recommenders if self.manager.experts.can_run(e[0])]

    def task_logprobs(self, context: Dialogue) -> torch.Tensor:
        prompt = detection_prompt(context, self.manager.demos, self.manager.config)
        names = [f" {t.name}" for t in SUBTASKS]
        scores = option_logprobs(self.model, self.tokenizer, prompt, names, self.mean)
        return torch.log_softmax(scores[0], dim=0)

    def expert_logprobs(self, experts: list[tuple[str, str]]) -> torch.Tensor:
        prompt = matching_prompt(SUBTASK["recommend"], experts)
        names = [f" {e[0]}" for e in experts]
        scores = option_logprobs(self.model, self.tokenizer, prompt, names, self.mean)
        return torch.log_softmax(scores[0], dim=0)

    def outcome(self, episode: Episode, task: str, expert: str) -> tuple[float, float]:
        """(HIT, BLEU) of a solution, from its execution (cached: experts are deterministic)."""
        key = (episode.key, task, expert)
        if key not in self._outcomes:
            experts = self.experts()
            order = sorted(experts, key=lambda e: e[0] != expert)
            output: ExpertOutput = self.manager.execute(
                SUBTASK[task], order if task == "recommend" else [], episode.context, None
            )[0]
            shown = [s.item_id for s in output.items[: self.settings.k]]
            hit = float(task == "recommend" and any(g in shown for g in episode.reference.items))
            self._outcomes[key] = (hit, bleu([output.text], [episode.reference.text], 2))
        return self._outcomes[key]

    def reward(self, episode: Episode, task: str, expert: str) -> float:
        hit, text = self.outcome(episode, task, expert)
        return self.settings.lam * hit + (1 - self.settings.lam) * text

    def expected_reward(self, episode: Episode) -> float:
        """E[R] under the policy (every solution weighed by its probability): the noise-free
        measure of progress."""
        with torch.inference_mode():
            tasks = self.task_logprobs(episode.context).exp().tolist()
            experts = self.experts()
            chosen = self.expert_logprobs(experts).exp().tolist() if len(experts) > 1 else [1.0]
        total = 0.0
        for key, p in zip(KEYS, tasks, strict=True):
            if key == "recommend":
                total += p * sum(
                    q * self.reward(episode, key, e[0])
                    for e, q in zip(experts, chosen, strict=True)
                )
            else:
                total += p * self.reward(episode, key, "")
        return total


@dataclass
class RLPFRun:
    """The loop's record: step, the reward and baseline of each step, dev expected reward."""

    step: int = 0
    baseline: float | None = None
    rewards: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)


def rlpf_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    episode: Episode,
    run: RLPFRun,
    rng: random.Random,
) -> float:
    """One REINFORCE update on one episode (batch size 1, §5); returns the reward."""
    task_lp = policy.task_logprobs(episode.context)
    task = rng.choices(KEYS, weights=task_lp.detach().exp().tolist())[0]
    logp = task_lp[KEYS.index(task)]
    expert = ""
    experts = policy.experts()
    if task == "recommend" and experts:
        expert = experts[0][0]
        if len(experts) > 1:
            expert_lp = policy.expert_logprobs(experts)
            index = rng.choices(range(len(experts)), weights=expert_lp.detach().exp().tolist())[0]
            expert, logp = experts[index][0], logp + expert_lp[index]
    reward = policy.reward(episode, task, expert)
    baseline = reward if run.baseline is None else run.baseline
    loss = -(reward - baseline) * logp  # Eq. 5
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    beta = policy.settings.beta
    run.baseline = beta * baseline + (1 - beta) * reward
    run.rewards.append(round(reward, 5))
    run.baselines.append(round(run.baseline, 5))
    return reward


def train_rlpf(
    dataset: Dataset,
    manager: LLMCRS,
    settings: RLPFSettings,
    out_dir: Path | None = None,
) -> Path:
    """RLPF on ``dataset``'s train turns, starting from the detection warm start's adapter when
    there is one; resumable; saves the adapter, the metrics and the reward curve (HTML)."""
    from peft import PeftModel

    began = time.perf_counter()
    cfg = manager.config
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir or default_adapter(dataset.name).with_name(f"{dataset.name}-rlpf"))
    train = episodes(dataset.splits.get("train", []))
    if not train:
        raise ValueError(f"{dataset.name}: no system turn in the train split to learn from")
    rng = random.Random(cfg.seed)
    dev = episodes(dataset.splits.get("dev", []))
    dev = random.Random(cfg.seed).sample(dev, min(len(dev), settings.dev_examples))
    base = LocalLLM(cfg.llm or get_settings().CRS_LLM, device=cfg.device)
    if manager.adapter is not None:  # continue from the detection warm start
        model = PeftModel.from_pretrained(base.model, manager.adapter, is_trainable=True)
    else:
        model = with_lora(base.model, settings.lora_r, settings.lora_alpha, 0.0)
    policy = Policy(model, base.tokenizer, manager, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    run_config = {"settings": asdict(settings), "model": asdict(cfg), "dataset": dataset.name}
    resume = out_dir / "train_state.pt"
    restored = restore_training_state(resume, model, optimizer, rng, run_config)
    run = RLPFRun(**restored) if restored else RLPFRun()

    def evaluate() -> None:
        mean = sum(policy.expected_reward(e) for e in dev) / len(dev) if dev else 0.0
        run.dev.append({"step": run.step, "expected_reward": round(mean, 5)})
        log.info("llmcrs rlpf step %d: dev expected reward %.4f", run.step, mean)

    bar = ProgressBar(total=settings.steps, initial=run.step, desc="llmcrs rlpf", unit="step")
    if not run.dev:  # the starting policy, after the bar so that progress shows meanwhile
        evaluate()
    for step in range(run.step + 1, settings.steps + 1):
        reward = rlpf_step(policy, optimizer, rng.choice(train), run, rng)
        run.step = step
        bar.update(1)
        bar.set_postfix(reward=f"{reward:.3f}", baseline=f"{run.baseline:.3f}")
        if step % settings.eval_every == 0 or step == settings.steps:
            evaluate()
        if step < settings.steps and step % settings.save_every == 0:
            save_training_state(resume, model, optimizer, rng, asdict(run), run_config)
    bar.close()
    model.save_pretrained(out_dir)
    metrics = {**asdict(run), "total_seconds": time.perf_counter() - began}
    saved = {"model": "llmcrs", "dataset": dataset.name, **asdict(cfg), **asdict(settings)}
    save_run_files(out_dir, saved, metrics)
    reward_curve(run, out_dir / "reward_curve.html")
    resume.unlink(missing_ok=True)
    return out_dir


def reward_curve(run: RLPFRun, path: Path, window: int = 20) -> None:
    """The reward per step (and its moving mean), the baseline and the dev expected reward."""
    import plotly.graph_objects as go

    steps = list(range(1, len(run.rewards) + 1))
    smooth = [
        sum(run.rewards[max(0, i - window + 1) : i + 1])
        / len(run.rewards[max(0, i - window + 1) : i + 1])
        for i in range(len(run.rewards))
    ]
    figure = go.Figure(
        [
            go.Scatter(
                x=steps, y=run.rewards, mode="markers", name="reward R (Eq. 2)", opacity=0.3
            ),
            go.Scatter(x=steps, y=smooth, name=f"mean of the last {window}"),
            go.Scatter(x=steps, y=run.baselines, name="baseline b (Eq. 5)"),
            go.Scatter(
                x=[d["step"] for d in run.dev],
                y=[d["expected_reward"] for d in run.dev],
                mode="lines+markers",
                name="dev expected reward",
            ),
        ]
    )
    figure.update_layout(title="LLMCRS RLPF", xaxis_title="step", yaxis_title="reward")
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    (path.with_suffix(".json")).write_text(json.dumps(asdict(run)))
