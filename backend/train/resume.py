"""Saving and taking up a LoRA training run between steps (a stopped run continues exactly)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    run: dict[str, Any],
    config: dict[str, Any],
) -> None:
    """The trainable weights, the optimizer, both random generators and ``run`` (the loop's
    own record), written atomically: a stop mid-write keeps the previous state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "config": config,
        "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "run": run,
    }
    torch.save(blob, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def restore_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    config: dict[str, Any],
) -> dict[str, Any] | None:
    """Take up the state at ``path`` if it belongs to this run (same ``config``); returns the
    run record, or None to start over."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["config"] != config:
        log.warning("%s belongs to another run (settings differ); starting over", path)
        return None
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved["weights"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    rng.setstate(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["run"]
