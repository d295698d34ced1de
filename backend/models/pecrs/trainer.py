"""PECRS training (`crs train pecrs`): the train step, dev model selection, and a resumable run."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.data.base import Dataset
from backend.eval.evaluate import recommender_turns
from backend.eval.metrics import recall_at_k
from backend.models.pecrs.config import PECRSConfig
from backend.models.pecrs.inference import (
    all_item_vectors,
    choose_rec_threshold,
    rank_items,
    rec_states,
)
from backend.models.pecrs.inputs import Sample, epoch_order
from backend.models.pecrs.model import (
    Built,
    PECRSNet,
    build,
    checkpoint_dir,
    count_trainable,
    pecrs_losses,
    save_checkpoint,
    trainable_parameters,
    training_batch,
)
from backend.models.pecrs.warm_start import DevQueries, freeze_warm_heads, warm_start_heads
from backend.progress import ProgressBar
from backend.registry import save_run_files
from backend.train.batches import epoch_batches
from backend.types import Dialogue

log = logging.getLogger(__name__)


def train_step(
    net: PECRSNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: Sequence[Sequence[Sample]],
    rng: random.Random,
) -> dict[str, float]:
    """One optimizer step over ``micro_batches`` (gradient accumulation); returns mean losses."""
    net.train()
    sums: dict[str, float] = {}
    for samples in micro_batches:
        losses = pecrs_losses(net, training_batch(net, samples, rng))
        (losses["loss"] / len(micro_batches)).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.item() / len(micro_batches)
    torch.nn.utils.clip_grad_norm_(trainable_parameters(net), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    net.sync_special()
    return sums


def dev_recall(
    net: PECRSNet,
    built: Built,
    jobs: Sequence[tuple[Dialogue, int]],
    all_items: torch.Tensor,
    rerank: bool,
    batch_size: int = 4,  # each row carries m_infer candidates: small batches bound the memory
) -> dict[str, float]:
    """Mean R@1/10/50 (the paper's model selection) over the gold items of ``jobs``, ranked by
    recall alone or by recall then rerank."""
    net.eval()
    hits: dict[int, list[float]] = {1: [], 10: [], 50: []}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        contexts = [built.inputs.context(d.turns[:i]) for d, i in chunk]
        exclude = [
            {built.inputs.row[m] for m in d.prefix(i).mentioned_items() if m in built.inputs.row}
            for d, i in chunk
        ]
        ranked, _ = rank_items(net, contexts, exclude, all_items, rerank)
        for (d, i), ranking in zip(chunk, ranked, strict=True):
            ids = [built.item_ids[r] for r, _ in ranking]
            for gold in built.inputs.known(d.turns[i]):
                for k in hits:
                    hits[k].append(recall_at_k(ids, gold, k))
    result = {f"recall@{k}": float(np.mean(v)) if v else 0.0 for k, v in hits.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def dev_rec_threshold(
    net: PECRSNet, built: Built, jobs: Sequence[tuple[Dialogue, int]], batch_size: int = 16
) -> tuple[float, float]:
    """The p([REC]) threshold with the best item-presence F1 on the system turns of ``jobs``."""
    net.eval()
    p: list[float] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        contexts = [built.inputs.context(d.turns[:i]) for d, i in chunk]
        p += rec_states(net, contexts)[1].p.tolist()
    gold = [bool(built.inputs.known(d.turns[i])) for d, i in jobs]
    return choose_rec_threshold(p, gold)


# ----------------------------------------------------------------------------- training


def train_pecrs(dataset: Dataset, cfg: PECRSConfig, out_dir: Path | None = None) -> Path:
    """Train PECRS on ``dataset``'s train split, keep the best dev checkpoint; returns its folder.

    Saves LoRA, the heads, ``config.json`` and ``metrics.json`` (losses per step, dev recall per
    evaluation, seconds per step and per epoch, the trainable fraction).
    """
    from transformers import get_linear_schedule_with_warmup

    began = time.perf_counter()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build(dataset, cfg)
    net = built.net
    train = built.inputs.samples(dataset.splits.get("train", []))
    if not any(s.gold is not None for s in train):
        raise ValueError(f"{dataset.name}: the train split has no system turn with a catalog item")
    dev_jobs = [
        (d, i)
        for d, i in recommender_turns(dataset.splits.get("dev", []), rec_only=True)
        if built.inputs.known(d.turns[i])
    ][: cfg.dev_samples]
    # The recommend threshold is chosen on system turns with and without an item.
    dev_turns = recommender_turns(dataset.splits.get("dev", []))[: 2 * cfg.dev_samples]
    out_dir = Path(out_dir) if out_dir else checkpoint_dir(cfg, dataset.name)

    per_step = cfg.batch_size * cfg.grad_accum
    epoch_size = len(epoch_order(train, cfg.rec_fraction, random.Random(0)))
    steps_per_epoch = math.ceil(epoch_size / per_step)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    head_params = list(net.heads.parameters())
    lm_params = [p for p in trainable_parameters(net) if all(p is not h for h in head_params)]
    groups = [{"params": lm_params}, {"params": head_params, "lr": cfg.head_lr or cfg.lr}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    trainable, params = count_trainable(net)
    log.info(
        "pecrs: %d training turns (%d with an item), %d steps of %d, %d / %d parameters train "
        "(%.1f%%), on %s",
        len(train),
        sum(s.gold is not None for s in train),
        total,
        per_step,
        trainable,
        params,
        100 * trainable / params,
        net.device,
    )
    rng = random.Random(cfg.seed)
    lengths = [len(s.context) + len(s.response) for s in train]
    run = TrainingRun(config={"dataset": dataset.name, **asdict(cfg)}, total=total)
    resume = out_dir / "train_state.pt"
    if run.restore(resume, net, optimizer, scheduler, rng):
        log.info("pecrs: resuming at step %d of %d from %s", run.step, total, resume)

    def evaluate(step: int) -> None:
        """Dev recall by recall alone and with rerank; the better one counts (recall-first:
        rerank is used only once it beats recall alone). Saves the best checkpoint."""
        if not dev_jobs:
            run.best, run.best_step = 0.0, step
            save_checkpoint(net, out_dir)
            return
        items = all_item_vectors(net)
        scores = {"recall": dev_recall(net, built, dev_jobs, items, rerank=False)}
        if cfg.rerank and cfg.beta and step > 0:  # untrained before any step, or with beta=0
            scores["rerank"] = dev_recall(net, built, dev_jobs, items, rerank=True)
        mode = max(scores, key=lambda m: scores[m]["mean"])
        run.dev.append({"step": step, "mode": mode, **scores[mode], "by_mode": scores})
        log.info("pecrs step %d: dev %s", step, scores)
        if scores[mode]["mean"] > run.best:
            run.best, run.best_step, run.rerank = scores[mode]["mean"], step, mode == "rerank"
            if dev_turns:
                run.rec_threshold, f1 = dev_rec_threshold(net, built, dev_turns)
                log.info(
                    "pecrs step %d: [REC] threshold %.3f, dev item F1 %.3f",
                    step,
                    run.rec_threshold,
                    f1,
                )
            save_checkpoint(net, out_dir)

    if not run.warmed:
        row = built.inputs.row
        dev = DevQueries(
            contexts=[built.inputs.context(d.turns[:i]) for d, i in dev_jobs],
            golds=[[row[g] for g in built.inputs.known(d.turns[i])] for d, i in dev_jobs],
            exclude=[
                {row[m] for m in d.prefix(i).mentioned_items() if m in row} for d, i in dev_jobs
            ],
        )
        run.warm_start = asdict(warm_start_heads(net, train, dev, random.Random(cfg.seed + 1)))
        run.warmed = True
        evaluate(0)
        run.save(resume, net, optimizer, scheduler, rng)
    if cfg.freeze_warm_start:
        freeze_warm_heads(net)
    start = time.perf_counter()
    bar = ProgressBar(total=total, initial=run.step, desc="pecrs", unit="step")
    for step in range(run.step + 1, total + 1):
        micro = []
        for _ in range(cfg.grad_accum):
            if not run.queue:
                order = epoch_order(train, cfg.rec_fraction, rng)
                batches = epoch_batches([lengths[i] for i in order], cfg.batch_size, rng)
                run.queue = [[order[j] for j in batch] for batch in batches]
            micro.append([train[i] for i in run.queue.pop()])
        losses = train_step(net, optimizer, scheduler, micro, rng)
        run.step = step
        run.history.append({"step": step, **{k: round(v, 5) for k, v in losses.items()}})
        bar.update(1)
        bar.set_postfix({k: f"{v:.2f}" for k, v in losses.items()})
        evaluated = step % eval_every == 0 or step == total
        if evaluated:
            train_seconds = time.perf_counter() - start
            evaluate(step)
            start += time.perf_counter() - start - train_seconds  # dev time is not training time
        if step < total and (evaluated or (cfg.save_every and step % cfg.save_every == 0)):
            run.save(resume, net, optimizer, scheduler, rng)
    bar.close()
    seconds = time.perf_counter() - start
    done = max(total - run.resumed_at, 1)  # steps this process ran, for the per-step figures
    metrics = {
        "warm_start": run.warm_start,
        "loss": run.history,
        "dev": run.dev,
        "rerank_used": run.rerank,
        "best_step": run.best_step,
        "best_dev": run.best,
        "resumed_at_step": run.resumed_at,
        "steps": total,
        "examples_per_step": per_step,
        "train_turns": len(train),
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": total / steps_per_epoch,
        "seconds": seconds,
        "seconds_per_step": seconds / done,
        "seconds_per_epoch": seconds / done * steps_per_epoch,
        "total_seconds": time.perf_counter() - began,
        "trainable_parameters": trainable,
        "parameters": params,
        "trainable_fraction": trainable / params,
        "device": str(net.device),
    }
    saved = {
        "model": "pecrs",
        "dataset": dataset.name,
        "backbone_resolved": built.backbone,
        **asdict(cfg),
        "rec_threshold": run.rec_threshold if cfg.rec_threshold < 0 else cfg.rec_threshold,
        "rerank": cfg.rerank and run.rerank,  # only where it beat recall alone on dev
    }
    save_run_files(out_dir, saved, metrics)
    resume.unlink(missing_ok=True)
    log.info(
        "pecrs saved to %s (best dev mean recall %.4f at step %d)", out_dir, run.best, run.best_step
    )
    return out_dir


@dataclass
class TrainingRun:
    """Where a training run stands; saved between steps so that a stopped run continues exactly.

    The state holds the trainable weights (LoRA, heads, the embedding's special rows), the
    optimizer and scheduler, the random generators, the epoch's remaining batches and the logs;
    it is only taken up again by the same run (same config).
    """

    config: dict[str, Any]
    total: int
    step: int = 0
    resumed_at: int = 0
    queue: list[list[int]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)
    best: float = -1.0
    best_step: int = 0
    rec_threshold: float = -1.0  # chosen on dev with the best checkpoint
    rerank: bool = False  # whether the best checkpoint ranks better on dev with rerank
    warmed: bool = False  # the heads' warm start is done
    warm_start: dict[str, Any] = field(default_factory=dict)  # losses, dev recall, kept epoch

    def save(
        self, path: Path, net: PECRSNet, optimizer: Any, scheduler: Any, rng: random.Random
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "run": {k: v for k, v in asdict(self).items() if k != "resumed_at"},
            "weights": {
                n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad
            },
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # a stop mid-write keeps the previous state

    def restore(
        self, path: Path, net: PECRSNet, optimizer: Any, scheduler: Any, rng: random.Random
    ) -> bool:
        """Take up the saved state of this same run, if there is one; True when resumed."""
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["run"]["config"] != self.config or state["run"]["total"] != self.total:
            log.warning("pecrs: %s belongs to another run (config differs); starting over", path)
            return False
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        net.sync_special()
        for key, value in state["run"].items():
            setattr(self, key, value)
        self.resumed_at = self.step
        return True
