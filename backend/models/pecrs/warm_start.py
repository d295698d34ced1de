"""A warm start of the PECRS heads on the frozen LM, before LoRA trains (issue 14's schedule).

Heads that start random make the first LoRA steps chase noise, and on CPU a run has few steps.
So the LM's state at [REC] after each training context is computed once (LoRA's B starts at zero,
so this is the frozen backbone) and cached; then the query projection f and the per-item bias
train on those states with the recall loss (Eq. 4) against the whole catalog rather than sampled
negatives (those stay a setting, for Table 5's ablations), which takes seconds per epoch, and the epoch with the best dev recall is kept. The item
side (pooling weights, h_item) waits for LoRA: the contexts' item slots go through it too, so
training it here would make the cached states stale (on ReDial dev that cost a third of the
recall: mean R@1/10/50 0.072 against 0.108 with it left alone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from backend.models.pecrs.config import PECRSConfig
from backend.models.pecrs.inference import rec_states
from backend.models.pecrs.inputs import Sample
from backend.models.pecrs.model import PECRSNet, sample_negatives
from backend.progress import ProgressBar
from backend.settings import get_settings

log = logging.getLogger(__name__)


def query_states(net: PECRSNet, contexts: Sequence[list[int]], batch_size: int = 8) -> torch.Tensor:
    """The [REC] state of each context, (N, H), cached on disk by the contexts and the heads'
    initial weights (so a rerun or an ablation with the same inputs reuses them)."""
    digest = hashlib.sha256(json.dumps([list(c) for c in contexts]).encode())
    # The heads' start (item MLP, feature stats from the item cache) shapes the contexts' item
    # vectors, and the special rows the [REC] input: both are part of the key.
    for tensor in [*net.heads.state_dict().values(), net.special_rows]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = digest.hexdigest()[:16]
    path = get_settings().cache / "pecrs" / f"rec-states-{key}.pt"
    if path.is_file():
        return torch.load(path)
    net.eval()
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))  # less padding
    states = torch.zeros(len(contexts), net.lm.config.hidden_size)
    bar = ProgressBar(total=len(order), desc="pecrs: [REC] states", unit="context")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        states[rows] = rec_states(net, [contexts[r] for r in rows])[0].float().cpu()
        bar.update(len(rows))
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(states, path)
    return states


@dataclass
class DevQueries:
    """Dev turns for choosing the warm start's epoch: contexts, gold item rows, rows to leave out."""

    contexts: list[list[int]]
    golds: list[list[int]]
    exclude: list[set[int]]


def dev_recall_of_states(
    net: PECRSNet, states: torch.Tensor, dev: DevQueries, items: torch.Tensor
) -> float:
    """Mean of R@1/10/50 over the dev gold items, ranking the whole catalog by recall alone."""
    with torch.no_grad():
        sims = net.similarity(states, items)
        for b, rows in enumerate(dev.exclude):
            if rows:
                sims[b, list(rows)] = -torch.inf
        top = sims.topk(min(50, sims.shape[1]), dim=1).indices.tolist()
    hits = [
        [gold in ranked[:k] for k in (1, 10, 50)]
        for ranked, golds in zip(top, dev.golds, strict=True)
        for gold in golds
    ]
    return float(np.mean(hits)) if hits else 0.0


def recall_loss(
    logits: torch.Tensor, golds: torch.Tensor, cfg: PECRSConfig, rng: random.Random
) -> torch.Tensor:
    """Eq. 4 over the whole catalog, or (``catalog_recall=false``) over each gold and the paper's
    M sampled negatives, one draw shared by the batch or a draw per context (Table 5's ablation)."""
    if cfg.catalog_recall:
        return F.cross_entropy(logits, golds)
    negatives = sample_negatives(
        golds.tolist(), logits.shape[1], cfg.m_train, cfg.share_negatives, rng
    )
    columns = torch.tensor(
        [[g, *negs] for g, negs in zip(golds.tolist(), negatives, strict=True)],
        device=logits.device,
    )
    return F.cross_entropy(logits.gather(1, columns), torch.zeros_like(golds))


@dataclass
class WarmStart:
    """What the warm start did: recall loss and dev mean recall per epoch, the epoch kept, and
    the training seconds per epoch (dev evaluation not counted)."""

    loss: list[float] = field(default_factory=list)
    dev: list[float] = field(default_factory=list)
    kept_epoch: int = 0
    seconds_per_epoch: float = 0.0


def warm_start_heads(
    net: PECRSNet,
    samples: Sequence[Sample],
    dev: DevQueries | None,
    rng: random.Random,
    batch_size: int = 128,
) -> WarmStart:
    """Train f and the item bias on cached [REC] states, keeping the epoch with the best dev
    recall (the last one without dev turns). Nothing trains with ``alpha=0`` (no recall loss)."""
    cfg = net.cfg
    done = WarmStart()
    with_item = [s for s in samples if s.gold is not None]
    # The warm start is recall-loss training: "w/o Recall loss" (alpha=0) has none.
    if cfg.warm_start_epochs <= 0 or not with_item or cfg.alpha == 0:
        return done
    contexts = list({tuple(s.context): None for s in with_item})
    row_of = {c: i for i, c in enumerate(contexts)}
    states = query_states(net, [list(c) for c in contexts]).to(net.device)
    dev_states = query_states(net, dev.contexts).to(net.device) if dev and dev.golds else None
    index = torch.tensor([row_of[tuple(s.context)] for s in with_item], device=net.device)
    golds = torch.tensor([s.gold for s in with_item], device=net.device)
    pooled = net.pooled_items()
    heads = net.heads
    # h_item stays: the contexts' item slots go through it, so training it would stale the cache.
    params = list(heads.f.parameters())
    if heads.bias.requires_grad:
        params.append(heads.bias)
    optimizer = torch.optim.AdamW(params, lr=cfg.warm_start_lr, weight_decay=0.0)
    best, kept = -1.0, [p.detach().clone() for p in params]
    order = list(range(len(with_item)))
    bar = ProgressBar(total=cfg.warm_start_epochs, desc="pecrs: warm start", unit="epoch")
    seconds = 0.0
    for epoch in range(1, cfg.warm_start_epochs + 1):
        began = time.perf_counter()
        heads.train()
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = torch.tensor(order[start : start + batch_size], device=net.device)
            logits = net.similarity(states[index[rows]], heads.items.h_item(pooled))
            loss = recall_loss(logits, golds[rows], cfg, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        done.loss.append(total / len(order))
        seconds += time.perf_counter() - began
        score = epoch  # without dev turns the last epoch is kept
        if dev_states is not None:
            heads.eval()
            with torch.no_grad():
                score = dev_recall_of_states(net, dev_states, dev, heads.items.h_item(pooled))
            done.dev.append(score)
        if score > best:
            best, done.kept_epoch = score, epoch
            kept = [p.detach().clone() for p in params]
        bar.update(1)
        bar.set_postfix(
            {"recall": f"{done.loss[-1]:.3f}", "dev": f"{done.dev[-1]:.4f}" if done.dev else "-"}
        )
    bar.close()
    done.seconds_per_epoch = seconds / cfg.warm_start_epochs
    with torch.no_grad():
        for p, value in zip(params, kept, strict=True):
            p.copy_(value)
    log.info(
        "pecrs warm start: recall loss %.3f -> %.3f; kept epoch %d (dev %s)",
        done.loss[0],
        done.loss[-1],
        done.kept_epoch,
        f"{best:.4f}" if done.dev else "not measured",
    )
    return done


def freeze_warm_heads(net: PECRSNet) -> None:
    """Keep f and the item bias as the warm start left them: without a gradient, the optimiser
    skips them, so the LoRA steps must learn [REC] states that suit them."""
    for p in [*net.heads.f.parameters(), net.heads.bias]:
        p.requires_grad_(False)
