"""Whole conversations with a simulated user (`crs simulate`): success within K turns and turns.

Each of ``n`` users (seeded choice among those with a history) wants their last liked movie; the
models see the rest of the history (for the models that read one) and the conversation, never
the target. An episode per (model, user) is appended to a transcript file (a `Journal`, kept) as it ends, so a stopped
run continues with the same command. Reported per model, as LatentCRS Table 4 and iEvaLM do:
S@k (the target shown within k system turns), AT (average system turns, a failure counting the
maximum), and the simulator's rewrites and template fallbacks (its leak guard at work).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from backend.data.base import Dataset
from backend.journal import Journal
from backend.registry import CRSModel
from backend.simulator import Episode, SimulatorConfig, UserSimulator, run_episode
from backend.types import Item, UserHistory

log = logging.getLogger(__name__)

SUCCESS_KS = (1, 3, 5)


def targets(dataset: Dataset, n: int, seed: int) -> list[tuple[UserHistory, Item]]:
    """``n`` users (seeded) with each one's history before their last liked movie, and that movie."""
    chosen = []
    for user_id in sorted(dataset.histories):
        history = dataset.histories[user_id]
        ordered = sorted(history.interactions, key=lambda i: i.time)
        liked = [i for i in ordered if i.rating >= history.like_threshold]
        if liked and liked[-1].item_id in dataset.catalog and len(ordered) > 1:
            last = liked[-1]
            before = [i for i in ordered if i is not last]
            chosen.append((history.model_copy(update={"interactions": before}), last.item_id))
    random.Random(seed).shuffle(chosen)
    return [(h, dataset.catalog[item_id]) for h, item_id in chosen[:n]]


def summary(episodes: list[Episode], config: SimulatorConfig) -> dict[str, float]:
    """S@k for k in 1/3/5 (those within max_turns), AT, and the leak guard's counts."""
    n = len(episodes)
    if not n:
        return {"episodes": 0}
    out: dict[str, float] = {"episodes": n}
    for k in (k for k in SUCCESS_KS if k <= config.max_turns):
        out[f"S@{k}"] = (
            sum(e.success_turn is not None and e.success_turn <= k for e in episodes) / n
        )
    out["AT"] = sum(e.success_turn or config.max_turns for e in episodes) / n
    out["rewrites_per_episode"] = sum(e.rewrites for e in episodes) / n
    out["fallbacks_per_episode"] = sum(e.fallbacks for e in episodes) / n
    out["reply_words"] = sum(
        len(str(t["text"]).split()) for e in episodes for t in e.turns if t["role"] == "system"
    ) / max(1, sum(e.system_turns for e in episodes))
    return out


def simulate(
    model: CRSModel,
    dataset: Dataset,
    simulator: UserSimulator,
    config: SimulatorConfig,
    n: int,
    transcripts: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one episode per target user with ``model``; resumes from ``transcripts`` (JSONL)."""
    jobs = targets(dataset, n, config.seed)
    journal = Journal(
        transcripts,
        {"model": model.name, "config": model.config_dict(), "simulator": asdict(config)},
    )
    done = [
        Episode(**r)
        for r in journal.load(lambda j, r: j < len(jobs) and r.get("target") == jobs[j][1].id)
    ]
    bar = tqdm(
        total=len(jobs), initial=len(done), desc=f"simulate {model.name}", disable=not progress
    )
    for history, target in jobs[len(done) :]:
        episode = run_episode(model, simulator, target, config, history)
        done.append(episode)
        journal.append([asdict(episode)])
        bar.update(1)
    bar.close()
    return {"model": model.name, "dataset": dataset.name, **summary(done, config)}
