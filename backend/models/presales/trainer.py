"""The resumable step loop both partners train with: a batch, its loss, an optimiser step; the
dev loss every ``eval_every`` steps keeps the best weights; the state is saved every
``save_every`` steps and a stopped run continues from there when started again the same way."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.progress import ProgressBar
from backend.train.resume import restore_training_state, save_training_state

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    steps: int
    eval_every: int = 50
    save_every: int = 10


@dataclass
class RunState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)
    best: float = float("inf")
    best_step: int = -1
    seconds: float = 0.0


def run_steps(
    name: str,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[random.Random], torch.Tensor],
    dev_loss: Callable[[], float],
    save_best: Callable[[], None],
    schedule: Schedule,
    state_path: Path,
    run_config: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Train ``module`` for ``schedule.steps`` steps of ``step_loss``; returns the run record
    (loss per step, dev losses, best step, seconds per step)."""
    rng = random.Random(seed)
    state = RunState()
    restored = restore_training_state(state_path, module, optimizer, rng, run_config)
    if restored is not None:
        state = RunState(**restored)
        log.info("%s: resuming at step %d of %d", name, state.step, schedule.steps)
    params = [p for p in module.parameters() if p.requires_grad]

    def evaluate() -> None:
        module.eval()
        with torch.no_grad():
            loss = dev_loss()
        module.train()
        state.dev.append({"step": state.step, "loss": round(loss, 5)})
        log.info("%s step %d: dev loss %.4f", name, state.step, loss)
        if loss <= state.best:
            state.best, state.best_step = loss, state.step
            save_best()

    bar = ProgressBar(total=schedule.steps, initial=state.step, desc=name, unit="step")
    if state.step == 0 and not state.dev:
        evaluate()
    module.train()
    for step in range(state.step + 1, schedule.steps + 1):
        began = time.perf_counter()
        loss = step_loss(rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        state.step = step
        state.losses.append(round(loss.item(), 5))
        state.seconds += time.perf_counter() - began
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % schedule.eval_every == 0 or step == schedule.steps:
            evaluate()
        if step < schedule.steps and step % schedule.save_every == 0:
            save_training_state(state_path, module, optimizer, rng, asdict(state), run_config)
    bar.close()
    state_path.unlink(missing_ok=True)
    return {
        **asdict(state),
        "seconds_per_step": state.seconds / max(state.step, 1),
    }
