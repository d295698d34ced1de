"""PECRS (Ravaut et al., 2024): a parameter-efficient CRS that recommends and talks with one LM.

A decoder-only LM with LoRA reads the dialogue, in which every mentioned movie is one input
vector made from its text (§3.2, Eq. 1-2). The LM's state at a final [REC] token queries all
items (recall, Eq. 3-4); the top candidates are appended after the context, each seeing only
the context, and scored again (rerank, Eq. 5); the best item is appended as [REC] item [REC_END]
and the LM writes the response (Eq. 6-7). One loss trains all three (Eq. 8).

The file reads like the paper: config, special tokens and inputs, the modules, the losses and a
training step, training (`crs train pecrs`), inference as a `CRSModel` (`crs eval pecrs`).

Two choices the paper leaves open, made here:
- Item token states come from the frozen backbone (LoRA off), computed once and cached on disk;
  the paper also stops the LM's gradients for items (§3.3) but re-encodes them with the current
  LoRA weights every step, which on CPU would cost more than the rest of the step.
- Similarity is the cosine over a temperature: the paper's exp(angular distance) (Eq. 3) needs a
  scale to train, and ranking by angular distance, sqrt(2(1 - cos)), is ranking by cosine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.eval.evaluate import recommender_turns
from backend.eval.metrics import item_presence_f1, recall_at_k
from backend.llm import best_device, resolve_model_dir
from backend.models.popularity import item_counts
from backend.progress import ProgressBar
from backend.registry import CRSModel, ModelConfig, register, save_run_files, timed
from backend.settings import get_settings
from backend.train.batches import epoch_batches
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, Turn, UserHistory

log = logging.getLogger(__name__)

ITEM, SEP, REC, REC_END = "[ITEM]", "[SEP]", "[REC]", "[REC_END]"
SPECIAL_TOKENS = (ITEM, SEP, REC, REC_END)
DECODINGS = ("greedy", "beam", "top-k", "nucleus")  # the strategies of Table 8


@dataclass
class PECRSConfig(ModelConfig):
    # Backbone: empty = CRS_LLM (the bundled SmolLM2-135M, GPT-2 small's size); any HF causal LM
    # folder works (GPT-2 medium, a 1B model on a GPU).
    backbone: str = ""
    device: str = ""  # empty = CRS_DEVICE
    checkpoint: str = ""  # folder; empty = CRS_HOME/checkpoints/pecrs/<trained_on or dataset>
    trained_on: str = ""  # dataset whose default checkpoint to load (the demo serves llm-redial's)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # peft's usual 0.05 costs ~15% of a CPU step in dropout masks
    # Inputs (§4.1: context capped at 256 tokens, response at 64).
    context_tokens: int = 256
    response_tokens: int = 64
    item_tokens: int = 64  # item text cap; plots past it are cut
    title_only: bool = False  # Table 5 "w/o Metadata (just title)"
    # Recommendation.
    m_train: int = 150  # negatives per training context (§4.1)
    m_infer: int = 700  # candidates retrieved for reranking at inference (§4.1)
    share_negatives: bool = True  # Table 5 "w/o Neg. sharing (batch)" when false
    temperature: float = 0.05  # cosine / temperature are the recall logits
    # Deviations that make short CPU runs learn (issue 14); the paper's value is the other one.
    item_bias: bool = (
        True  # a per-item recall bias started from log(1 + train mentions); paper: off
    )
    every_item: bool = True  # each movie of a response is a sample; paper: the first one only
    rec_fraction: float = 0.75  # share of recommending turns in an epoch; 0 = natural mix (paper)
    # Loss weights of Eq. 8; alpha=0 is "w/o Recall loss", beta=0 "w/o Rerank loss".
    alpha: float = 0.15
    beta: float = 0.85
    gamma: float = 1.0
    # Training (§4.1: AdamW, lr 3e-5, linear warm-up for 1 of 10 epochs, effective batch 8).
    epochs: int = 10
    max_steps: int = 0  # 0 = run all epochs
    batch_size: int = 4  # 4 x 2 micro-batches = the paper's effective 8, under 4 GB on CPU
    grad_accum: int = 2
    lr: float = 3e-5
    head_lr: float = 0.0  # 0 = lr; the randomly initialised heads learn faster on short CPU runs
    warmup_ratio: float = 0.1
    eval_every: int = 0  # optimizer steps between dev evaluations; 0 = once per epoch
    dev_samples: int = 200  # dev recommendation samples per evaluation (model selection)
    save_every: int = 20  # optimizer steps between resumable training states (0 = at evals only)
    # Recompute each layer's activations in backward instead of keeping them: a training step's
    # peak memory on CPU falls from about 10.5 GB to under 4 GB for some extra compute.
    gradient_checkpointing: bool = True
    # Recommend when p([REC] next) >= this; negative: when [REC] is the LM's most likely token.
    # Training sets it to the dev split's best item-presence F1 (saved with the checkpoint).
    rec_threshold: float = -1.0
    # Generation (§4.1: top-k sampling with k = 50; Table 8 compares the others).
    generate: bool = True  # false: rank only and answer with a template (fast evaluation)
    rerank: bool = True  # false: rank by the recall similarity alone (to measure each stage)
    decoding: str = "top-k"
    sample_top_k: int = 50
    sample_top_p: float = 0.9
    num_beams: int = 4
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(f"pecrs: decoding must be one of {', '.join(DECODINGS)}")
        if self.m_train < 1 or self.m_infer < 1:
            raise ValueError("pecrs: m_train and m_infer must be >= 1")


# ----------------------------------------------------------------------------- inputs (§3.2)


@dataclass
class Sample:
    """One system turn to predict: the context ids, the response ids and the gold item.

    Token ids are >= 0; an item's input vector takes the place of a negative id, -(1 + index),
    where index is the item's row in the model's item table.
    """

    context: list[int]  # ends with the "System:" cue
    response: list[int]  # the turn's text with mentions as [ITEM], then end-of-sequence
    gold: int | None  # item row of the recommended movie; None for a turn without one


def slot(index: int) -> int:
    return -1 - index


def mask_mentions(text: str, items: Sequence[str], catalog: Catalog) -> str:
    """The text with each mentioned item's title replaced by [ITEM] (its first occurrence)."""
    for item_id in items:
        item = catalog[item_id]
        for name in (item.display_title, item.title):
            at = text.lower().find(name.lower())
            if at >= 0:
                text = text[:at] + ITEM + text[at + len(name) :]
                break
    return text


class Inputs:
    """Turns dialogues into PECRS token sequences for one tokenizer and item table."""

    def __init__(self, tokenizer: Any, catalog: Catalog, item_ids: Sequence[str], cfg: PECRSConfig):
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.row = {item_id: i for i, item_id in enumerate(item_ids)}
        self.cfg = cfg
        self.special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.eos = tokenizer.eos_token_id

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def known(self, turn: Turn) -> list[str]:
        return [i for i in dict.fromkeys(turn.items) if i in self.row]

    def utterance(self, turn: Turn) -> list[int]:
        """ "System:" [REC] v [REC_END] text, or "User:" [SEP] v [SEP] text (§3.2)."""
        items = self.known(turn)
        opening, closing = (REC, REC_END) if turn.role == "system" else (SEP, SEP)
        ids = self.ids("System:" if turn.role == "system" else "User:")
        for item_id in items:
            ids += [self.special[opening], slot(self.row[item_id]), self.special[closing]]
        return ids + self.ids(" " + mask_mentions(turn.text, items, self.catalog) + "\n")

    def context(self, turns: Sequence[Turn]) -> list[int]:
        """All turns, cut from the left to ``context_tokens``, then the "System:" cue."""
        ids = [i for turn in turns for i in self.utterance(turn)]
        cue = self.ids("System:")
        return ids[-(self.cfg.context_tokens - len(cue)) :] + cue

    def response(self, turn: Turn) -> list[int]:
        text = " " + mask_mentions(turn.text, self.known(turn), self.catalog)
        return self.ids(text)[: self.cfg.response_tokens - 1] + [self.eos]

    def turn_samples(self, dialogue: Dialogue, i: int) -> list[Sample]:
        """The samples of system turn ``i``: one per movie it names (``every_item``), or one for
        its first movie as in the paper (§3.1), or one without a movie."""
        turn = dialogue.turns[i]
        known = self.known(turn)
        context, response = self.context(dialogue.turns[:i]), self.response(turn)
        golds = known if self.cfg.every_item else known[:1]
        return [Sample(context, response, self.row[g]) for g in golds] or [
            Sample(context, response, None)
        ]

    def samples(self, dialogues: Sequence[Dialogue]) -> list[Sample]:
        return [s for d, i in recommender_turns(dialogues) for s in self.turn_samples(d, i)]


def epoch_order(samples: Sequence[Sample], rec_fraction: float, rng: random.Random) -> list[int]:
    """The sample indices of one epoch: every recommending sample, and as many of the others as
    make recommending samples ``rec_fraction`` of the epoch (all of them when it is 0)."""
    rec = [i for i, s in enumerate(samples) if s.gold is not None]
    other = [i for i, s in enumerate(samples) if s.gold is None]
    if rec_fraction > 0 and rec:
        keep = min(len(other), round(len(rec) * (1 - rec_fraction) / rec_fraction))
        other = rng.sample(other, keep)
    return rec + other


def item_text_hash(texts: Sequence[str], backbone: str, cfg: PECRSConfig) -> str:
    key = json.dumps([backbone, cfg.item_tokens, list(SPECIAL_TOKENS), list(texts)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- modules


def mlp(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class ItemPooling(nn.Module):
    """Eq. 1: v_j = h_item(w^T I_j), learnable weights over token positions, then an MLP.

    The pooled states are standardised per feature first: an LM's hidden states share a few huge
    outlier features (SmolLM2's pooled item states have a mean cosine of 0.91 with each other),
    which would otherwise drown what tells items apart.
    """

    def __init__(self, hidden: int, max_tokens: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(max_tokens))  # softmax of zeros: mean pooling
        self.h_item = mlp(hidden, hidden)
        # Feature mean and std of the item token states; set from the cache, saved with the heads.
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("std", torch.ones(hidden))

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        width = states.shape[1]
        valid = torch.arange(width, device=states.device)[None, :] < lengths[:, None]
        # Normalised over each text's own tokens, so short and long texts pool on one scale.
        weights = self.weights[:width].expand_as(valid).masked_fill(~valid, -torch.inf)
        pooled = torch.einsum("nl,nlh->nh", weights.softmax(-1), states.float())
        return self.h_item((pooled - self.mean) / self.std)


class PECRSHeads(nn.Module):
    """Everything PECRS trains besides LoRA: item pooling, f (projection), g (rerank scorer)."""

    def __init__(self, hidden: int, max_item_tokens: int, n_items: int):
        super().__init__()
        self.items = ItemPooling(hidden, max_item_tokens)
        self.f = mlp(hidden, hidden)  # two-layer MLP with ReLU (§3.3)
        self.g = mlp(hidden, 1)
        # Added to every recall logit (item_bias); zeros keep the paper's pure cosine.
        self.bias = nn.Parameter(torch.zeros(n_items), requires_grad=False)
        self.register_buffer("token_norm", torch.ones(()))  # mean norm of the LM's token embeddings


@dataclass
class ItemStates:
    """The frozen backbone's last hidden states of every item text, padded: (N, L, H), (N,)."""

    states: torch.Tensor
    lengths: torch.Tensor

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std over every real token of every item."""
        total = torch.zeros(self.states.shape[-1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(self.lengths), 256):
            states = self.states[start : start + 256].double()
            valid = torch.arange(states.shape[1])[None, :] < self.lengths[start : start + 256, None]
            picked = states[valid]
            total += picked.sum(0)
            squares += (picked**2).sum(0)
        n = int(self.lengths.sum())
        mean = total / n
        return mean.float(), (squares / n - mean**2).clamp(min=1e-6).sqrt().float()

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.lengths[rows]
        width = int(lengths.max().item()) if len(rows) else 1
        return self.states[rows, :width], lengths


# ----------------------------------------------------------------------------- batches and masks


@dataclass
class Batch:
    """Right-padded sequences with PECRS's attention mask and positions, plus what the losses read."""

    ids: torch.Tensor  # (B, T) token ids, item slots negative, padding 0
    mask: torch.Tensor  # (B, 1, T, T) additive: 0 where a query may attend a key, -inf elsewhere
    positions: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) next-token targets (the token at t + 1), -100 elsewhere
    rec_at: torch.Tensor  # (B,) position of [REC], -1 for a turn without an item
    candidates_at: torch.Tensor  # (B, K) positions of the candidate items, -1 padding
    candidates: torch.Tensor  # (B, K) item rows of the candidates, -1 padding
    gold_at: torch.Tensor  # (B,) index of the gold item among the candidates, -1 when none


def build_batch(
    sequences: Sequence[list[int]],
    rec_at: Sequence[int],
    candidates: Sequence[Sequence[int]],
    gold: Sequence[int | None],
    loss_from: Sequence[int],
    device: torch.device,
) -> Batch:
    """Lay out ``sequence + candidates`` per row.

    The sequence is causal. Each candidate attends to the sequence up to [REC] and to itself,
    and all candidates share the position right after [REC] (where the chosen item goes in
    Eq. 6), so neither their order nor each other leaks into their scores (§3.3). Labels cover
    the sequence from ``loss_from`` on (the [REC] token and the response).
    """
    rows = len(sequences)
    width = max(len(s) + len(c) for s, c in zip(sequences, candidates, strict=True))
    most = max((len(c) for c in candidates), default=0) or 1
    ids = torch.zeros(rows, width, dtype=torch.long)
    allowed = torch.zeros(rows, width, width, dtype=torch.bool)
    positions = torch.zeros(rows, width, dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    cand_at = torch.full((rows, most), -1, dtype=torch.long)
    cand_rows = torch.full((rows, most), -1, dtype=torch.long)
    gold_at = torch.full((rows,), -1, dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for b, (seq, cands) in enumerate(zip(sequences, candidates, strict=True)):
        n, k = len(seq), len(cands)
        ids[b, :n] = torch.tensor(seq)
        allowed[b, :n, :n] = causal[:n, :n]
        positions[b, :n] = torch.arange(n)
        # An item slot is an input vector, not a token to predict.
        targets = torch.tensor([t if t >= 0 else -100 for t in seq[loss_from[b] :]])
        labels[b, loss_from[b] - 1 : n - 1] = targets
        if k:
            at = torch.arange(n, n + k)
            ids[b, n : n + k] = torch.tensor([slot(c) for c in cands])
            allowed[b, n : n + k, : rec_at[b] + 1] = True
            allowed[b, at, at] = True
            positions[b, n : n + k] = rec_at[b] + 1
            cand_at[b, :k] = at
            cand_rows[b, :k] = torch.tensor(cands)
            if gold[b] is not None:
                gold_at[b] = list(cands).index(gold[b])
        # Padding rows attend to themselves only, so the softmax stays finite.
        pad = torch.arange(n + k, width)
        allowed[b, pad, pad] = True
    mask = torch.zeros(rows, 1, width, width).masked_fill(~allowed[:, None], -torch.inf)
    return Batch(
        ids=ids.to(device),
        mask=mask.to(device),
        positions=positions.to(device),
        labels=labels.to(device),
        rec_at=torch.tensor(list(rec_at), device=device),
        candidates_at=cand_at.to(device),
        candidates=cand_rows.to(device),
        gold_at=gold_at.to(device),
    )


def sample_negatives(
    golds: Sequence[int | None], n_items: int, m: int, share: bool, rng: random.Random
) -> list[list[int]]:
    """M negatives per context with a gold item (empty lists for the others).

    Shared (§3.6): one draw for the whole batch that holds none of the batch's positives, so
    each context's candidates are its gold plus the same M items. Not shared: a draw per context
    that only avoids its own gold.
    """
    positives = {g for g in golds if g is not None}

    def draw(avoid: set[int]) -> list[int]:
        pool = n_items - len(avoid)
        if pool < m:
            raise ValueError(f"pecrs: m_train={m} negatives need more than {n_items} items")
        picked: list[int] = []
        seen = set(avoid)
        while len(picked) < m:
            row = rng.randrange(n_items)
            if row not in seen:
                seen.add(row)
                picked.append(row)
        return picked

    shared = draw(positives) if share and positives else []
    return [[] if g is None else (list(shared) if share else draw({g})) for g in golds]


# ----------------------------------------------------------------------------- the network


class PECRSNet(nn.Module):
    """The LoRA-wrapped LM, the heads and the cached item states; the losses and the scores."""

    def __init__(
        self, lm: Any, tokenizer: Any, heads: PECRSHeads, items: ItemStates, cfg: PECRSConfig
    ):
        super().__init__()
        self.lm = lm  # a peft model
        self.tokenizer = tokenizer
        self.heads = heads
        self.items = items
        self.cfg = cfg
        self.special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        # The special tokens' rows train as their own parameter (§3.5 trains only these rows),
        # so the optimiser never holds gradients or moments for the tied embedding's other rows.
        ids = [self.special[t] for t in SPECIAL_TOKENS]
        weight = lm.get_input_embeddings().weight
        self.register_buffer(
            "special_ids", torch.tensor(ids, device=weight.device), persistent=False
        )
        self.special_rows = nn.Parameter(weight[ids].detach().clone())

    def sync_special(self) -> None:
        """Write the trained special rows into the (frozen, tied) embedding, for generate()."""
        with torch.no_grad():
            self.lm.get_input_embeddings().weight[self.special_ids] = self.special_rows

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def body(self) -> Any:
        """The transformer without its vocabulary projection (e.g. LlamaModel)."""
        return self.lm.get_base_model().base_model

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        states, lengths = self.items.take(rows.cpu())
        return self.heads.items(states.to(self.device), lengths.to(self.device))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, with each item slot replaced by that item's vector (Eq. 2)."""
        is_item = ids < 0
        embeds = self.lm.get_input_embeddings()(ids.clamp(min=0))
        which = ids[..., None] == self.special_ids  # (B, L, 4): which special token, if any
        if which.any():
            special = which.to(self.special_rows.dtype) @ self.special_rows
            embeds = torch.where(which.any(-1, keepdim=True), special, embeds)
        if is_item.any():
            rows = -1 - ids[is_item]
            unique, inverse = rows.unique(return_inverse=True)
            # Items enter the LM at the typical norm of a token embedding.
            vectors = F.normalize(self.item_vectors(unique), dim=-1) * self.heads.token_norm
            vectors = vectors.to(embeds.dtype)
            embeds = embeds.masked_scatter(is_item[..., None], vectors[inverse])
        return embeds

    def hidden(self, batch: Batch) -> torch.Tensor:
        out = self.body(
            inputs_embeds=self.embed(batch.ids),
            attention_mask=batch.mask.to(self.lm.dtype),
            position_ids=batch.positions,
        )
        return out.last_hidden_state

    def similarity(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Recall logits: cosine of f(d_t) and each item vector, over the temperature."""
        q = F.normalize(self.heads.f(queries.float()), dim=-1)
        return q @ F.normalize(keys.float(), dim=-1).T / self.cfg.temperature + self.heads.bias

    def rerank_scores(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """g(f(LM state of each candidate)), -inf on padding: (B, K)."""
        at = batch.candidates_at.clamp(min=0)
        states = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
        scores = self.heads.g(self.heads.f(states.float())).squeeze(-1)
        return scores.masked_fill(batch.candidates_at < 0, -torch.inf)


# ----------------------------------------------------------------------------- losses (Eq. 3-8)


def training_batch(net: PECRSNet, samples: Sequence[Sample], rng: random.Random) -> Batch:
    """The single sequence per sample that serves all three losses.

    With a gold item: context [REC] v_p [REC_END] response, then the shuffled candidates.
    Without: context response (Eq. 6 and the line after it).
    """
    cfg = net.cfg
    golds = [s.gold for s in samples]
    negatives = sample_negatives(
        golds, len(net.items.lengths), cfg.m_train, cfg.share_negatives, rng
    )
    sequences, rec_at, candidates, loss_from = [], [], [], []
    for sample, negs in zip(samples, negatives, strict=True):
        n = len(sample.context)
        if sample.gold is None:
            sequences.append(sample.context + sample.response)
            rec_at.append(-1)
            candidates.append([])
        else:
            item = [net.special[REC], slot(sample.gold), net.special[REC_END]]
            sequences.append(sample.context + item + sample.response)
            rec_at.append(n)
            cands = [sample.gold, *negs]
            rng.shuffle(cands)  # the gold's place is random (Eq. 5)
            candidates.append(cands)
        # The LM also learns to emit [REC] when the turn recommends (the decision at inference).
        loss_from.append(n)
    return build_batch(sequences, rec_at, candidates, golds, loss_from, net.device)


def pecrs_losses(net: PECRSNet, batch: Batch) -> dict[str, torch.Tensor]:
    """L_recall (Eq. 4), L_rerank (Eq. 5), L_gen (Eq. 7) and their sum L (Eq. 8)."""
    cfg = net.cfg
    hidden = net.hidden(batch)
    # Generation: the vocabulary projection only where a label is (cheap on CPU).
    labels = batch.labels
    where = labels != -100
    states = hidden[where]
    logits = net.lm.get_output_embeddings()(states).float()
    # The special tokens' logits from their trained rows (the tied weight only gets a copy).
    logits = logits.index_copy(1, net.special_ids, (states @ net.special_rows.T).float())
    token_loss = F.cross_entropy(logits, labels[where], reduction="none")
    per_row = torch.zeros(labels.shape[0], device=hidden.device).index_add(
        0, where.nonzero()[:, 0], token_loss
    ) / where.sum(1).clamp(min=1)
    gen = per_row.mean()

    has = batch.rec_at >= 0
    zero = hidden.new_zeros(()).float()
    recall = rerank = zero
    if has.any():
        rows = has.nonzero()[:, 0]
        queries = hidden[rows, batch.rec_at[rows]]
        cands = batch.candidates[rows]  # (R, K)
        keys = net.item_vectors(cands.clamp(min=0).flatten()).view(*cands.shape, -1)
        q = F.normalize(net.heads.f(queries.float()), dim=-1)
        sims = torch.einsum("rh,rkh->rk", q, F.normalize(keys.float(), dim=-1)) / cfg.temperature
        sims = sims + net.heads.bias[cands.clamp(min=0)]
        sims = sims.masked_fill(cands < 0, -torch.inf)
        recall = F.cross_entropy(sims, batch.gold_at[rows])
        scores = net.rerank_scores(hidden, batch)[rows]
        rerank = F.cross_entropy(scores, batch.gold_at[rows])
    total = cfg.alpha * recall + cfg.beta * rerank + cfg.gamma * gen
    return {"loss": total, "recall": recall, "rerank": rerank, "gen": gen}


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


# ----------------------------------------------------------------------------- building


def trainable_parameters(net: PECRSNet) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def count_trainable(net: PECRSNet) -> tuple[int, int]:
    """(trainable, total) parameters; the special rows count once (their copy is frozen)."""
    total = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    return sum(p.numel() for p in trainable_parameters(net)), total - net.special_rows.numel()


def encode_items(
    lm: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int, device: torch.device
) -> ItemStates:
    """Run the backbone over every item text once (no gradients): the cached I_j of Eq. 1."""
    encoded = [
        tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] or [tokenizer.eos_token_id]
        for t in texts
    ]
    hidden = lm.config.hidden_size
    states = torch.zeros(len(texts), max_tokens, hidden, dtype=torch.float16)
    lengths = torch.tensor([len(e) for e in encoded])
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    body = lm.get_base_model().base_model if hasattr(lm, "get_base_model") else lm.base_model
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), 32), desc="pecrs: encode items", unit="batch"):
            rows = order[start : start + 32]
            width = max(len(encoded[r]) for r in rows)
            ids = torch.tensor([encoded[r] + [0] * (width - len(encoded[r])) for r in rows])
            mask = (torch.arange(width)[None, :] < lengths[rows][:, None]).long()
            out = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            states[rows, :width] = out.to("cpu", torch.float16)
    return ItemStates(states=states, lengths=lengths)


def default_checkpoint(dataset_name: str) -> Path:
    return get_settings().checkpoints / "pecrs" / dataset_name


@dataclass
class Built:
    net: PECRSNet
    item_ids: list[str]
    inputs: Inputs
    backbone: str


def build(dataset: Dataset, cfg: PECRSConfig, checkpoint: Path | None = None) -> Built:
    """The backbone with the special tokens, the item cache, LoRA and the heads.

    With ``checkpoint``, LoRA, the heads and the special-token rows are loaded from it.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = get_settings()
    backbone = cfg.backbone or settings.CRS_LLM
    device = best_device(cfg.device or settings.CRS_DEVICE)
    folder = resolve_model_dir(backbone)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    old_rows = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        # New tokens start at the mean embedding: deterministic, so cached item states stay valid.
        weight = lm.get_input_embeddings().weight
        weight[old_rows:] = weight[:old_rows].mean(0)
    lm.to(device)

    item_ids = [item.id for item in dataset.catalog]
    texts = [dataset.catalog.item_text(i, title_only=cfg.title_only) for i in item_ids]
    cache = settings.cache / "pecrs" / f"items-{item_text_hash(texts, backbone, cfg)}.pt"
    if cache.is_file():
        items = ItemStates(**torch.load(cache))
    else:
        items = encode_items(lm, tokenizer, texts, cfg.item_tokens, device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(asdict(items), cache)

    for p in lm.parameters():
        p.requires_grad_(False)
    if checkpoint is None:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        peft_lm = get_peft_model(lm, lora)
    else:
        peft_lm = PeftModel.from_pretrained(lm, checkpoint, is_trainable=True)
    if cfg.gradient_checkpointing:  # only acts in train mode; inference is unchanged
        # Reentrant checkpoints keep less than non-reentrant ones here (4.07 vs 4.90 GB at the
        # peak of a batch of 8); they need the embeddings' output to require a gradient.
        peft_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        peft_lm.enable_input_require_grads()
    heads = PECRSHeads(lm.config.hidden_size, cfg.item_tokens, len(item_ids))
    if cfg.item_bias:
        counts = item_counts(dataset)
        with torch.no_grad():
            heads.bias.copy_(torch.tensor([math.log1p(counts.get(i, 0)) for i in item_ids]))
        heads.bias.requires_grad_(True)
    heads.items.mean, heads.items.std = items.feature_stats()
    heads.token_norm = (
        lm.get_input_embeddings().weight[: -len(SPECIAL_TOKENS)].norm(dim=-1).mean().detach().cpu()
    )
    heads.to(device)
    net = PECRSNet(peft_lm, tokenizer, heads, items, cfg)
    if checkpoint is not None:
        state = torch.load(checkpoint / "heads.pt", map_location=device)
        # Checkpoints from before item_bias have none: their recall is the plain cosine.
        state["heads"].setdefault("bias", torch.zeros(len(item_ids), device=device))
        heads.load_state_dict(state["heads"])
        with torch.no_grad():
            net.special_rows.copy_(state["special"].to(device))
        net.sync_special()
    return Built(
        net=net,
        item_ids=item_ids,
        inputs=Inputs(tokenizer, dataset.catalog, item_ids, cfg),
        backbone=backbone,
    )


def save_checkpoint(net: PECRSNet, out_dir: Path) -> None:
    """LoRA (peft's format), the heads and the special-token embedding rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    net.lm.save_pretrained(out_dir)
    special = net.special_rows.detach().cpu()
    torch.save({"heads": net.heads.state_dict(), "special": special}, out_dir / "heads.pt")


# ----------------------------------------------------------------------------- inference


def retrieve(
    net: PECRSNet,
    queries: torch.Tensor,
    exclude: Sequence[set[int]],
    m: int,
    all_items: torch.Tensor,
) -> list[list[int]]:
    """Top-``m`` item rows per query by similarity to every item (§3.6), without ``exclude``."""
    sims = net.similarity(queries, all_items)
    for b, rows in enumerate(exclude):
        if rows:
            sims[b, list(rows)] = -torch.inf
    top = sims.topk(min(m, sims.shape[1]), dim=1)
    # Fewer items than m are left when the catalog is small: drop the excluded ones.
    return [
        [r for r, v in zip(rows, values, strict=True) if v != -math.inf]
        for rows, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


@dataclass
class RecDecision:
    """Whether each context's turn recommends: p([REC] next) and whether [REC] is the top token."""

    p: torch.Tensor
    top: torch.Tensor

    def wants(self, threshold: float) -> list[bool]:
        """The decision at ``threshold`` (negative: [REC] must be the most likely token)."""
        chosen = self.top if threshold < 0 else self.p >= threshold
        return [bool(w) for w in chosen.tolist()]


def choose_rec_threshold(p: Sequence[float], gold: Sequence[bool]) -> tuple[float, float]:
    """The threshold on p([REC]) with the best item-presence F1 on labelled turns, and that F1."""
    best = (1.0, -1.0)
    for threshold in sorted(set(p)):
        f1 = item_presence_f1([x >= threshold for x in p], gold)["f1"]
        if f1 > best[1]:
            best = (threshold, f1)
    return best


def rank_items(
    net: PECRSNet,
    contexts: Sequence[list[int]],
    exclude: Sequence[set[int]],
    all_items: torch.Tensor,
) -> tuple[list[list[tuple[int, float]]], RecDecision]:
    """Recall then rerank for each context: (item row, rerank score) best first, and the
    recommend decision's inputs."""
    cfg = net.cfg
    rec = net.special[REC]
    with torch.inference_mode():
        first = build_batch(
            [c + [rec] for c in contexts],
            [len(c) for c in contexts],
            [[] for _ in contexts],
            [None] * len(contexts),
            [len(c) for c in contexts],
            net.device,
        )
        hidden = net.hidden(first)
        idx = torch.arange(len(contexts), device=net.device)
        queries = hidden[idx, first.rec_at]
        # The LM's probability of [REC] as the next token after the context decides to recommend.
        next_logits = net.lm.get_output_embeddings()(hidden[idx, first.rec_at - 1]).float()
        wants = RecDecision(next_logits.softmax(-1)[:, rec], next_logits.argmax(-1) == rec)
        shortlists = retrieve(net, queries, exclude, cfg.m_infer, all_items)
        if not cfg.rerank:
            sims = net.similarity(queries, all_items)
            return [
                [(r, float(sims[b, r])) for r in rows] for b, rows in enumerate(shortlists)
            ], wants
        second = build_batch(
            [c + [rec] for c in contexts],
            [len(c) for c in contexts],
            shortlists,
            [None] * len(contexts),
            [len(c) for c in contexts],
            net.device,
        )
        scores = net.rerank_scores(net.hidden(second), second)
    ranked = []
    for b, shortlist in enumerate(shortlists):
        row_scores = scores[b, : len(shortlist)].tolist()
        ranked.append(sorted(zip(shortlist, row_scores, strict=True), key=lambda p: -p[1]))
    return ranked, wants


def decoding_kwargs(cfg: PECRSConfig) -> dict[str, Any]:
    """`generate` settings for the configured strategy (Table 8's rows)."""
    if cfg.decoding == "greedy":
        return {"do_sample": False, "num_beams": 1}
    if cfg.decoding == "beam":
        return {"do_sample": False, "num_beams": cfg.num_beams}
    if cfg.decoding == "top-k":
        return {"do_sample": True, "top_k": cfg.sample_top_k, "top_p": 1.0}
    return {"do_sample": True, "top_k": 0, "top_p": cfg.sample_top_p}


def generate_responses(net: PECRSNet, prompts: Sequence[list[int]]) -> list[str]:
    """Decode a response after each prompt (left-padded embeddings); special tokens kept."""
    cfg = net.cfg
    tokenizer = net.tokenizer
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=net.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=net.device)
    torch.manual_seed(cfg.seed)
    with torch.inference_mode():
        out = net.lm.generate(
            inputs_embeds=net.embed(ids),
            attention_mask=mask,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **decoding_kwargs(cfg),
        )
    texts = []
    for row in out.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=False))
    return texts


def fill_items(text: str, titles: Sequence[str]) -> str:
    """The generated text for people: each [ITEM] becomes the next recommended title."""
    for token in (SEP, REC, REC_END):
        text = text.replace(token, " ")
    for title in titles:
        text = text.replace(ITEM, title, 1)
    return " ".join(text.replace(ITEM, "").split())


def dev_recall(
    net: PECRSNet,
    built: Built,
    jobs: Sequence[tuple[Dialogue, int]],
    all_items: torch.Tensor,
    batch_size: int = 4,  # each row carries m_infer candidates: small batches bound the memory
) -> dict[str, float]:
    """Mean R@1/10/50 (the paper's model selection) over the gold items of ``jobs``."""
    net.eval()
    hits: dict[int, list[float]] = {1: [], 10: [], 50: []}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        contexts = [built.inputs.context(d.turns[:i]) for d, i in chunk]
        exclude = [
            {built.inputs.row[m] for m in d.prefix(i).mentioned_items() if m in built.inputs.row}
            for d, i in chunk
        ]
        ranked, _ = rank_items(net, contexts, exclude, all_items)
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
        with torch.inference_mode():
            # As in rank_items: the state of the context's last token, before [REC].
            batch = build_batch(
                [c + [net.special[REC]] for c in contexts],
                [len(c) for c in contexts],
                [[] for _ in contexts],
                [None] * len(contexts),
                [len(c) for c in contexts],
                net.device,
            )
            hidden = net.hidden(batch)
            last = hidden[torch.arange(len(contexts), device=net.device), batch.rec_at - 1]
            logits = net.lm.get_output_embeddings()(last).float()
        p += logits.softmax(-1)[:, net.special[REC]].tolist()
    gold = [bool(built.inputs.known(d.turns[i])) for d, i in jobs]
    return choose_rec_threshold(p, gold)


def all_item_vectors(net: PECRSNet, chunk: int = 512) -> torch.Tensor:
    """Eq. 1 for every item, computed once per inference (or dev evaluation)."""
    n = len(net.items.lengths)
    with torch.inference_mode():
        return torch.cat(
            [net.item_vectors(torch.arange(s, min(s + chunk, n))) for s in range(0, n, chunk)]
        )


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
    out_dir = Path(out_dir or cfg.checkpoint or default_checkpoint(dataset.name))

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
            score = (
                dev_recall(net, built, dev_jobs, all_item_vectors(net))
                if dev_jobs
                else {"mean": 0.0}
            )
            run.dev.append({"step": step, **score})
            log.info("pecrs step %d: dev %s", step, score)
            if score["mean"] > run.best or not dev_jobs:
                run.best, run.best_step = score["mean"], step
                if dev_turns:
                    run.rec_threshold, f1 = dev_rec_threshold(net, built, dev_turns)
                    log.info(
                        "pecrs step %d: [REC] threshold %.3f, dev item F1 %.3f",
                        step,
                        run.rec_threshold,
                        f1,
                    )
                save_checkpoint(net, out_dir)
            start += time.perf_counter() - start - train_seconds  # dev time is not training time
        if step < total and (evaluated or (cfg.save_every and step % cfg.save_every == 0)):
            run.save(resume, net, optimizer, scheduler, rng)
    bar.close()
    seconds = time.perf_counter() - start
    done = max(total - run.resumed_at, 1)  # steps this process ran, for the per-step figures
    metrics = {
        "loss": run.history,
        "dev": run.dev,
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


def train_command(dataset_name: str) -> str:
    return f"crs train pecrs --dataset {dataset_name}"


# ----------------------------------------------------------------------------- the model


@register
class PECRS(CRSModel):
    name = "pecrs"
    description = (
        "PECRS: one LoRA-tuned language model that reads the dialogue with every movie as a "
        "vector of its text, retrieves and reranks movies from its [REC] state, and writes the "
        "reply around the best one."
    )
    config_class = PECRSConfig

    def __init__(self, dataset: Dataset, config: PECRSConfig | None = None):
        super().__init__(dataset, config)
        cfg = self.config
        trained_on = cfg.trained_on or dataset.name
        path = Path(cfg.checkpoint or default_checkpoint(trained_on))
        if not (path / "heads.pt").is_file():
            raise FileNotFoundError(
                f"no pecrs checkpoint at {path}; train one with `{train_command(trained_on)}`"
            )
        trained = json.loads((path / "config.json").read_text())
        # The checkpoint fixes the network's shape and inputs; these keys come from it.
        for key in ("lora_r", "lora_alpha", "item_tokens", "title_only", "temperature"):
            setattr(cfg, key, trained[key])
        if cfg.rec_threshold < 0:  # unless given, the threshold chosen on dev in training
            cfg.rec_threshold = float(trained.get("rec_threshold", -1.0))
        cfg.backbone = trained["backbone_resolved"]
        self.built = build(dataset, cfg, checkpoint=path)
        self.net = self.built.net
        self.net.eval()
        self.all_items = all_item_vectors(self.net)
        self.version = f"{Path(self.built.backbone).name}:{path.name}"
        self._lock = threading.Lock()  # the server may call from several threads

    def save(self, path: Path) -> None:
        """LoRA, the heads, the special-token rows and the config, loadable with ``checkpoint``."""
        save_checkpoint(self.net, path)
        trained = {"backbone_resolved": self.built.backbone, **self.config_dict()}
        (path / "config.json").write_text(json.dumps(trained, indent=2))

    @classmethod
    def load(cls, path: Path, dataset: Dataset) -> CRSModel:
        return cls(dataset, PECRSConfig(checkpoint=str(path)))

    def _context(self, dialogue: Dialogue) -> tuple[list[int], set[int]]:
        rows = self.built.inputs.row
        return (
            self.built.inputs.context(dialogue.turns),
            {rows[i] for i in dialogue.mentioned_items() if i in rows},
        )

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        """Recall, rerank, then (with ``generate``) a sampled response around the top item."""
        if not dialogues:
            return []
        with self._lock:
            return self._respond_batch(dialogues)

    def _respond_batch(self, dialogues: Sequence[Dialogue]) -> list[Reply]:
        started = time.perf_counter()
        contexts, exclude = zip(*(self._context(d) for d in dialogues), strict=True)
        ranked, decision = rank_items(self.net, contexts, exclude, self.all_items)
        wants = decision.wants(self.config.rec_threshold)
        ranked_at = time.perf_counter()
        texts: list[str] = [""] * len(dialogues)
        net = self.net
        if self.config.generate:
            prompts = [
                c + ([net.special[REC], slot(r[0][0]), net.special[REC_END]] if w and r else [])
                for c, r, w in zip(contexts, ranked, wants, strict=True)
            ]
            texts = generate_responses(net, prompts)
        replies = []
        for ranking, want, p, raw in zip(ranked, wants, decision.p.tolist(), texts, strict=True):
            items = [
                ScoredItem(
                    item_id=self.built.item_ids[row],
                    score=score,
                    title=self.catalog[self.built.item_ids[row]].display_title,
                )
                for row, score in ranking[: self.config.top_k]
            ]
            titles = [s.title for s in items]
            text = fill_items(raw, titles) if self.config.generate else ""
            recommends = want and bool(titles)
            if recommends and ITEM not in raw:
                # The decision says recommend, so the reply names the item even if the LM did not.
                text = f"You might like {titles[0]}. {text}".strip()
            if not text:  # not generating, or the LM stopped at once
                text = "What kind of movies do you like?"
            trace = [
                TraceStep(
                    name="recall + rerank",
                    input=f"{self.config.m_infer} candidates of {len(self.built.item_ids)}",
                    output=[(s.title, round(s.score, 3)) for s in items[:10]],
                    seconds=(ranked_at - started) / len(dialogues),
                ),
                TraceStep(
                    name="recommend?",
                    input=f"p([REC]) = {p:.3f}, threshold {self.config.rec_threshold:g}",
                    output=bool(want),
                ),
            ]
            if self.config.generate:
                trace.append(TraceStep(name="generate", input=self.config.decoding, output=raw))
            replies.append(
                Reply(text=text, items=items, recommends=recommends, trace=trace, model=self.name)
            )
        return replies

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]

    def reference_nll(
        self, dialogues: Sequence[Dialogue], references: Sequence[Turn]
    ) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and token count of each reference response, given its
        context and, when it names one, its gold item (Eq. 6): the perplexity of Table 3."""
        samples = [
            # Perplexity conditions on the first movie only, as the paper's one gold per response.
            self.built.inputs.turn_samples(
                d.model_copy(update={"turns": [*d.turns, ref]}), len(d.turns)
            )[0]
            for d, ref in zip(dialogues, references, strict=True)
        ]
        net = self.net
        sequences, loss_from = [], []
        for s in samples:
            item = [] if s.gold is None else [net.special[REC], slot(s.gold), net.special[REC_END]]
            sequences.append(s.context + item + s.response)
            loss_from.append(len(s.context) + len(item))
        batch = build_batch(
            sequences,
            [-1] * len(samples),
            [[] for _ in samples],
            [None] * len(samples),
            loss_from,
            net.device,
        )
        with torch.inference_mode():
            hidden = net.hidden(batch)
            out = []
            for b in range(len(samples)):
                where = batch.labels[b] != -100
                logits = net.lm.get_output_embeddings()(hidden[b][where]).float()
                nll = F.cross_entropy(logits, batch.labels[b][where], reduction="sum")
                out.append((float(nll), int(where.sum())))
        return out
