"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

Reads top to bottom like the paper: config, the attention blocks, the model, the loss, the
training loop, and inference as a `CRSModel`. A user's sequence is their time-ordered history
(MovieLens) or the items mentioned so far in a dialogue (ReDial), so the same network serves both
settings; LatentCRS later reuses its user embeddings.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from backend.data.base import Dataset
from backend.llm import best_device
from backend.models.popularity import item_counts
from backend.models.templates import recommendation_text
from backend.progress import ProgressBar
from backend.registry import CRSModel, ModelConfig, register, save_run_files, timed
from backend.settings import get_settings
from backend.types import Dialogue, Reply, TraceStep, UserHistory

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig(ModelConfig):
    max_len: int = 50  # the paper's n for MovieLens-1M is 200; 50 covers most ML-100K/ReDial users
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    # "ce": softmax over all items (Klenitskiy & Vasilev, RecSys 2023, found it far stronger);
    # "bce": the paper's one sampled negative per position.
    loss: str = "ce"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-3  # tuned on ML-100K leave-one-out: 1e-3 reached HR@10 0.025 in 30 epochs, 5e-3 0.071 in 100
    weight_decay: float = 0.0
    max_steps: int = 0  # 0 = run all epochs
    device: str = "auto"
    checkpoint: str = ""  # directory; empty = CRS_HOME/checkpoints/sasrec/<dataset>


# ----------------------------------------------------------------------------- modules


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SASRecBlock(nn.Module):
    """Pre-norm causal self-attention then a point-wise feed-forward, both residual (paper §III-B)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = PointWiseFeedForward(hidden, dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        out, _ = self.attn(q, x, x, attn_mask=causal, need_weights=False)
        x = q + out
        x = x + self.ffn(self.ffn_norm(x))
        return x * (~pad).unsqueeze(-1)  # keep padded positions at zero, as the paper does


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # 0 = padding
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.max_len = cfg.max_len

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, T) of item indices, left-padded with 0 -> hidden states (B, T, H)."""
        B, T = seq.shape
        pad = seq == 0
        x = self.item_emb(seq) * self.item_emb.embedding_dim**0.5
        x = x + self.pos_emb(torch.arange(T, device=seq.device)).unsqueeze(0)
        x = self.dropout(x) * (~pad).unsqueeze(-1)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=seq.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal, pad)
        return self.norm(x)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., n_items + 1) dot products with every item embedding (shared weights)."""
        return hidden @ self.item_emb.weight.T


# ----------------------------------------------------------------------------- data and loss


def sequences_for(dataset: Dataset, split: str) -> list[list[str]]:
    """Training sequences: each user's time-ordered history, or each dialogue's mentioned items."""
    seqs = [[i.item_id for i in h.interactions] for h in dataset.histories.values()]
    seqs += [d.mentioned_items() for d in dataset.splits.get(split, [])]
    return [s for s in seqs if len(s) >= 2]


def pad_left(seq: Sequence[int], length: int) -> list[int]:
    seq = list(seq)[-length:]
    return [0] * (length - len(seq)) + seq


def sasrec_loss(net: SASRecNet, seq: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Next-item loss over every non-padded position; target (B, T) with 0 where ignored."""
    hidden = net(seq)
    mask = target > 0
    if kind == "ce":
        logits = net.scores(hidden[mask])
        logits[:, 0] = float("-inf")  # padding is never a valid next item
        return F.cross_entropy(logits, target[mask])
    negatives = torch.randint(1, net.item_emb.num_embeddings, target.shape, device=target.device)
    pos = (hidden * net.item_emb(target)).sum(-1)[mask]
    neg = (hidden * net.item_emb(negatives)).sum(-1)[mask]
    return F.binary_cross_entropy_with_logits(
        pos, torch.ones_like(pos)
    ) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


def _hit_ndcg(
    net: SASRecNet, seqs: list[list[int]], device: torch.device, k: int = 10
) -> dict[str, float]:
    """Leave-last-out HR@k / NDCG@k over all items (no sampled candidates)."""
    if not seqs:
        return {}
    net.eval()
    hits, ndcg = [], []
    with torch.inference_mode():
        for start in range(0, len(seqs), 256):
            chunk = seqs[start : start + 256]
            inp = torch.tensor([pad_left(s[:-1], net.max_len) for s in chunk], device=device)
            gold = torch.tensor([s[-1] for s in chunk], device=device)
            scores = net.scores(net(inp)[:, -1])
            scores[:, 0] = float("-inf")
            rank = (scores > scores.gather(1, gold[:, None])).sum(1) + 1
            hits += (rank <= k).float().tolist()
            ndcg += torch.where(
                rank <= k, 1 / torch.log2(rank.float() + 1), torch.zeros_like(rank.float())
            ).tolist()
    net.train()
    return {f"hr@{k}": float(np.mean(hits)), f"ndcg@{k}": float(np.mean(ndcg)), "n": len(seqs)}


def default_checkpoint(dataset_name: str) -> Path:
    return get_settings().checkpoints / "sasrec" / dataset_name


def train_sasrec(dataset: Dataset, config: SASRecConfig, out_dir: Path | None = None) -> Path:
    """Train on ``dataset`` and save weights, config and metrics beside each other; returns the dir."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = best_device(config.device)
    index = {item_id: i + 1 for i, item_id in enumerate(dataset.catalog.ids)}
    to_idx = lambda seq: [index[i] for i in seq if i in index]  # noqa: E731
    train = [to_idx(s) for s in sequences_for(dataset, "train")]
    # Validation: the last item of dev dialogues, or of each history (leave-one-out).
    if dataset.splits.get("dev"):
        valid = [
            s for s in (to_idx(d.mentioned_items()) for d in dataset.splits["dev"]) if len(s) >= 2
        ]
    else:
        # Leave-one-out: long sequences lend their last item to validation, short ones train whole.
        valid = [s for s in train if len(s) >= 3]
        train = [s[:-1] if len(s) >= 3 else s for s in train]
    if not train:
        raise ValueError(f"{dataset.name}: no training sequence has two or more catalog items")

    # Windows of max_len + 1 items so long histories contribute every position.
    windows = []
    for s in train:
        for end in range(len(s), 1, -config.max_len):
            windows.append(s[max(0, end - config.max_len - 1) : end])
    net = SASRecNet(len(index), config).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(windows) + config.batch_size - 1) // config.batch_size
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)
    log.info(
        "sasrec: %d sequences, %d windows, %d items, %d steps on %s",
        len(train),
        len(windows),
        len(index),
        total,
        device,
    )
    out_dir = out_dir or Path(config.checkpoint or default_checkpoint(dataset.name))
    resume = out_dir / "train_state.pt"
    history, step, start = [], 0, time.perf_counter()
    rng = random.Random(config.seed)
    run_config = {"model": "sasrec", "dataset": dataset.name, **asdict(config)}
    if resume.exists():
        # Resume at the last finished epoch, if the run is the same one (same config, same data).
        saved = torch.load(resume, map_location="cpu", weights_only=False)
        if saved["config"] == run_config and len(saved["windows"]) == len(windows):
            windows = saved["windows"]  # in the order the finished epochs left them
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            history, step = saved["history"], saved["step"]
            rng.setstate(saved["rng"])
            log.info("sasrec: resuming at step %d of %d from %s", step, total, resume)
    bar = ProgressBar(total=total, initial=step, desc="sasrec", unit="step")
    while step < total:
        rng.shuffle(windows)
        losses = []
        for b in range(0, len(windows), config.batch_size):
            batch = windows[b : b + config.batch_size]
            seq = torch.tensor([pad_left(w[:-1], config.max_len) for w in batch], device=device)
            target = torch.tensor([pad_left(w[1:], config.max_len) for w in batch], device=device)
            loss = sasrec_loss(net, seq, target, config.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
        history.append({"epoch": len(history) + 1, "loss": float(np.mean(losses)), "step": step})
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": run_config,
            "windows": windows,
            "net": net.state_dict(),
            "opt": opt.state_dict(),
            "history": history,
            "step": step,
            "rng": rng.getstate(),
        }
        torch.save(state, resume.with_suffix(".tmp"))
        resume.with_suffix(".tmp").replace(resume)  # a stop mid-write keeps the previous state
    bar.close()
    metrics = {
        "train_loss": history,
        "valid": _hit_ndcg(net, valid, device),
        "seconds": time.perf_counter() - start,
        "steps": step,
        "sequences": len(train),
    }
    save_run_files(out_dir, run_config, metrics)
    torch.save(
        {"state_dict": net.state_dict(), "item_ids": dataset.catalog.ids}, out_dir / "model.pt"
    )
    resume.unlink(missing_ok=True)
    log.info("sasrec saved to %s (valid %s)", out_dir, metrics["valid"])
    return out_dir


# ----------------------------------------------------------------------------- inference


@register
class SASRec(CRSModel):
    name = "sasrec"
    description = (
        "Sequential recommender (SASRec): predicts the next item from the user's watch history "
        "and the movies mentioned in the dialogue. Strong when the user names movies they like; "
        "cannot read free-text requests."
    )
    config_class = SASRecConfig

    def __init__(self, dataset: Dataset, config: SASRecConfig | None = None):
        super().__init__(dataset, config)
        ckpt = Path(self.config.checkpoint or default_checkpoint(dataset.name))
        if not (ckpt / "model.pt").exists():
            raise FileNotFoundError(
                f"no SASRec checkpoint at {ckpt}; train one with `crs train sasrec --dataset {dataset.name}`"
            )
        saved = json.loads((ckpt / "config.json").read_text())
        # The checkpoint's training config describes the model; only run-time fields stay ours.
        runtime = {k: getattr(self.config, k) for k in ("top_k", "device", "checkpoint")}
        trained = {k: v for k, v in saved.items() if k in SASRecConfig.__dataclass_fields__}
        self.config = SASRecConfig(**{**trained, **runtime})
        state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
        if state["item_ids"] != self.catalog.ids:
            raise ValueError(
                f"checkpoint {ckpt} was trained on a different {dataset.name} catalog; retrain it"
            )
        self.device = best_device(self.config.device)
        self.net = SASRecNet(len(self.catalog), self.config).to(self.device)
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()
        self.version = f"{ckpt.name}@{int((ckpt / 'model.pt').stat().st_mtime)}"
        counts = item_counts(dataset)
        self.fallback = {i: float(counts.get(i, 0)) for i in self.catalog.ids}

    def sequence(self, dialogue: Dialogue, history: UserHistory | None) -> list[int]:
        ids = [i.item_id for i in history.interactions] if history else []
        ids += dialogue.mentioned_items()
        return [self.catalog.index[i] + 1 for i in ids if i in self.catalog]

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        histories = histories or [None] * len(dialogues)
        seqs = [self.sequence(d, h) for d, h in zip(dialogues, histories, strict=True)]
        inp = torch.tensor([pad_left(s, self.config.max_len) for s in seqs], device=self.device)
        with torch.inference_mode():
            scores = self.net.scores(self.net(inp)[:, -1])[:, 1:].cpu().numpy()
        replies = []
        for dialogue, history, seq, row in zip(dialogues, histories, seqs, scores, strict=True):
            exclude = set(dialogue.mentioned_items()) | (
                {i.item_id for i in history.interactions} if history else set()
            )
            if seq:
                ranked = self._ranked(
                    dict(zip(self.catalog.ids, row.tolist(), strict=True)), exclude
                )
                last = self.catalog[self.catalog.ids[seq[-1] - 1]].display_title
                ranked[:6] = [
                    s.model_copy(update={"why": f"Often watched after {last}"}) for s in ranked[:6]
                ]
                step = TraceStep(
                    name="sequence",
                    input=[self.catalog.ids[i - 1] for i in seq],
                    output=len(ranked),
                )
            else:
                # With nothing to condition on, SASRec's output is noise; popularity is the honest prior.
                ranked = self._ranked(self.fallback, exclude)
                step = TraceStep(
                    name="fallback: popularity", input="no known items yet", output=len(ranked)
                )
            text = recommendation_text([self.catalog[s.item_id] for s in ranked[:3]])
            replies.append(
                Reply(
                    text=text, items=ranked, recommends=bool(ranked), trace=[step], model=self.name
                )
            )
        return replies

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]
