"""A warm start of the PECRS heads on the frozen LM, before LoRA trains (issue 14's schedule).

Heads that start random make the first LoRA steps chase noise, and on CPU a run has few steps.
So the LM's state at [REC] after each training context is computed once (LoRA's B starts at zero,
so this is the frozen backbone) and cached; then f, the item MLP h_item and the per-item bias
train on those states with the recall loss (Eq. 4) against the whole catalog rather than sampled
negatives, which takes seconds per epoch. The items' pooling weights stay at mean pooling here
and train later with LoRA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from backend.models.pecrs.inference import rec_states
from backend.models.pecrs.inputs import Sample
from backend.models.pecrs.model import PECRSNet
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


def pooled_items(net: PECRSNet, chunk: int = 256) -> torch.Tensor:
    """Every item's pooled, standardised token states (what h_item reads), (N_items, H)."""
    n = len(net.items.lengths)
    with torch.no_grad():
        parts = []
        for start in range(0, n, chunk):
            states, lengths = net.items.take(torch.arange(start, min(start + chunk, n)))
            parts.append(net.heads.items.pool(states.to(net.device), lengths.to(net.device)))
    return torch.cat(parts)


def warm_start_heads(
    net: PECRSNet, samples: Sequence[Sample], rng: random.Random, batch_size: int = 128
) -> list[float]:
    """Train f, h_item and the item bias on cached [REC] states; returns the loss per epoch."""
    cfg = net.cfg
    with_item = [s for s in samples if s.gold is not None]
    if cfg.warm_start_epochs <= 0 or not with_item:
        return []
    contexts = list({tuple(s.context): None for s in with_item})
    row_of = {c: i for i, c in enumerate(contexts)}
    states = query_states(net, [list(c) for c in contexts]).to(net.device)
    index = torch.tensor([row_of[tuple(s.context)] for s in with_item], device=net.device)
    golds = torch.tensor([s.gold for s in with_item], device=net.device)
    pooled = pooled_items(net)
    heads = net.heads
    params = [*heads.f.parameters(), *heads.items.h_item.parameters()]
    if heads.bias.requires_grad:
        params.append(heads.bias)
    optimizer = torch.optim.AdamW(params, lr=cfg.warm_start_lr, weight_decay=0.0)
    losses = []
    order = list(range(len(with_item)))
    bar = ProgressBar(total=cfg.warm_start_epochs, desc="pecrs: warm start", unit="epoch")
    heads.train()
    for _ in range(cfg.warm_start_epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = torch.tensor(order[start : start + batch_size], device=net.device)
            logits = net.similarity(states[index[rows]], heads.items.h_item(pooled))
            loss = F.cross_entropy(logits, golds[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(total / len(order))
        bar.update(1)
        bar.set_postfix({"recall": f"{losses[-1]:.3f}"})
    bar.close()
    log.info("pecrs warm start: recall loss %.3f -> %.3f", losses[0], losses[-1])
    return losses
