"""Whole conversations with a simulated user (`crs simulate`): success within K turns and turns.

Each of ``n`` users (seeded choice among those with a history) wants their last liked movie; the
models see the rest of the history (for the models that read one) and the conversation, never
the target. An episode per (model, user) is appended to a transcript file (a `Journal`, kept) as it ends, so a stopped
run continues with the same command. Reported per model, as LatentCRS Table 4 and iEvaLM do:
S@k (the target shown within k system turns), AT (average system turns, a failure counting the
maximum), the LLM tokens the model spent, and the simulator's rewrites and template fallbacks (its leak guard and act check
at work).

Simulated battles: the same simulated user (same target, same seed) talks to two models, and
who showed the target in fewer turns wins; the verdict is stored beside human votes as an arena
vote of source "simulated", so the leaderboard can rank models by it and compare the two boards.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from tqdm.auto import tqdm

from backend.data.base import Dataset
from backend.journal import Journal
from backend.registry import CRSModel
from backend.simulator import Episode, SimulatorConfig, UserSimulator, leaks, run_episode
from backend.types import Dialogue, Item, Turn, UserHistory
from db.arena import VOTES, record_vote

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
    """S@k for k in 1/3/5 (those within max_turns), AT, recall at each turn, the tokens spent,
    and the leak guard's and act check's counts."""
    n = len(episodes)
    if not n:
        return {"episodes": 0}
    out: dict[str, float] = {"episodes": n}
    for k in (k for k in SUCCESS_KS if k <= config.max_turns):
        out[f"S@{k}"] = (
            sum(e.success_turn is not None and e.success_turn <= k for e in episodes) / n
        )
    out["AT"] = sum(e.success_turn or config.max_turns for e in episodes) / n
    # Recall at each turn: of the conversations still going at turn t, the share whose t-th reply
    # shows the target among its first items_per_turn items.
    for t in range(1, config.max_turns + 1):
        going = [e for e in episodes if e.system_turns >= t]
        if going:
            out[f"recall@{config.items_per_turn}_turn{t}"] = sum(
                e.success_turn == t for e in going
            ) / len(going)
    out["rewrites_per_episode"] = sum(e.rewrites for e in episodes) / n
    out["act_rewrites_per_episode"] = sum(e.act_rewrites for e in episodes) / n
    out["fallbacks_per_episode"] = sum(e.fallbacks for e in episodes) / n
    # LLM tokens the model spent (read and written) per episode, as LatentCRS Table 6 counts them.
    out["tokens_per_episode"] = (
        sum(int(t.get("tokens", 0)) for e in episodes for t in e.turns if t["role"] == "system") / n
    )
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
    return {
        "model": model.name,
        "dataset": dataset.name,
        **summary(done, config),
        "leak_rate": leak_rate(done, dataset, config),
    }


def leak_rate(episodes: list[Episode], dataset: Dataset, config: SimulatorConfig) -> float:
    """Share of the user lines in the transcripts that name their target (after the guard)."""
    lines = [
        (t["text"], dataset.catalog[e.target])
        for e in episodes
        for t in e.turns
        if t["role"] == "user"
    ]
    return sum(leaks(str(text), target, config.near_copy) for text, target in lines) / max(
        1, len(lines)
    )


def battle_vote(a: Episode, b: Episode) -> str:
    """The simulated user's verdict between two episodes with the same target and seed: the one
    that showed the target in fewer turns wins ("A" / "B"); "tie" when both did in as many,
    "both_bad" when neither did."""
    if a.success_turn is None and b.success_turn is None:
        return "both_bad"
    turns_a = a.success_turn or float("inf")
    turns_b = b.success_turn or float("inf")
    return "tie" if turns_a == turns_b else "A" if turns_a < turns_b else "B"


def _as_dialogue(episode: Episode, target: Item) -> Dialogue:
    turns = [
        Turn(role=t["role"], text=str(t["text"]), items=list(t.get("items", [])))
        for t in episode.turns
    ]
    return Dialogue(id=f"sim-{target.id}", turns=turns, meta={"target": target.id})


def simulated_battles(
    engine: Engine | None,
    model_a: CRSModel,
    model_b: CRSModel,
    dataset: Dataset,
    make_simulator: Callable[[], UserSimulator],
    config: SimulatorConfig,
    n: int,
    progress: bool = True,
) -> dict[str, int]:
    """One battle per target user: the same simulated user (same target, same seed) talks to
    both models, and its verdict is stored as an arena vote of source "simulated" (once per
    round: running again adds nothing). Returns the count of each verdict."""
    counts = {vote: 0 for vote in VOTES}
    for history, target in tqdm(
        targets(dataset, n, config.seed),
        desc=f"{model_a.name} vs {model_b.name}",
        disable=not progress,
    ):
        episodes = [
            run_episode(model, make_simulator(), target, config, history)
            for model in (model_a, model_b)
        ]
        vote = battle_vote(*episodes)
        record_vote(
            engine,
            # One round per (seed, user, pair); hashed to fit the 64-character round id.
            round_id="sim-"
            + hashlib.sha256(
                f"{config.seed}|{dataset.name}|{history.user_id}|{model_a.name}|{model_b.name}".encode()
            ).hexdigest()[:40],
            model_a=model_a.name,
            model_b=model_b.name,
            left_model=model_a.name,
            vote=vote,
            conversation_a=_as_dialogue(episodes[0], target),
            conversation_b=_as_dialogue(episodes[1], target),
            source="simulated",
        )
        counts[vote] += 1
    return counts
