"""The PECRS network: item pooling and heads (Eq. 1), the LoRA LM with items as input vectors (Eq. 2), batches with the candidates' mask, and the losses (Eq. 3-8)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from backend.data.base import Dataset
from backend.llm import best_device, checkpoint_layers, load_with_tokens, with_lora
from backend.models.pecrs.config import REC, REC_END, SPECIAL_TOKENS, PECRSConfig
from backend.models.pecrs.inputs import Inputs, Sample, item_text_hash, slot
from backend.models.popularity import item_counts
from backend.settings import get_settings

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

    def pool(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """w^T I_j, standardised: what h_item reads."""
        width = states.shape[1]
        valid = torch.arange(width, device=states.device)[None, :] < lengths[:, None]
        # Normalised over each text's own tokens, so short and long texts pool on one scale.
        weights = self.weights[:width].expand_as(valid).masked_fill(~valid, -torch.inf)
        pooled = torch.einsum("nl,nlh->nh", weights.softmax(-1), states.float())
        return (pooled - self.mean) / self.std

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.h_item(self.pool(states, lengths))


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

    def pooled_items(self, chunk: int = 256) -> torch.Tensor:
        """Every item's pooled, standardised token states (what h_item reads), without gradients
        (the pooling weights learn through the items in contexts and candidates)."""
        n = len(self.items.lengths)
        with torch.no_grad():
            parts = []
            for start in range(0, n, chunk):
                states, lengths = self.items.take(torch.arange(start, min(start + chunk, n)))
                parts.append(self.heads.items.pool(states.to(self.device), lengths.to(self.device)))
        return torch.cat(parts)

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
    # Candidates only serve the rerank loss (and the sampled recall): a recall-first run skips
    # them, which makes a CPU step about 2.4x cheaper.
    m = cfg.m_train if cfg.beta or not cfg.catalog_recall else 0
    negatives = sample_negatives(golds, len(net.items.lengths), m, cfg.share_negatives, rng)
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
        if cfg.catalog_recall:  # every item is a negative, the hard ones included
            golds = cands.gather(1, batch.gold_at[rows, None]).squeeze(1)
            keys = net.heads.items.h_item(net.pooled_items())
            recall = F.cross_entropy(net.similarity(queries, keys), golds)
        else:  # the paper's M sampled negatives
            keys = net.item_vectors(cands.clamp(min=0).flatten()).view(*cands.shape, -1)
            q = F.normalize(net.heads.f(queries.float()), dim=-1)
            sims = torch.einsum("rh,rkh->rk", q, F.normalize(keys.float(), dim=-1))
            sims = sims / cfg.temperature + net.heads.bias[cands.clamp(min=0)]
            sims = sims.masked_fill(cands < 0, -torch.inf)
            recall = F.cross_entropy(sims, batch.gold_at[rows])
        scores = net.rerank_scores(hidden, batch)[rows]
        rerank = F.cross_entropy(scores, batch.gold_at[rows])
    total = cfg.alpha * recall + cfg.beta * rerank + cfg.gamma * gen
    return {"loss": total, "recall": recall, "rerank": rerank, "gen": gen}


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


def checkpoint_dir(cfg: PECRSConfig, dataset_name: str) -> Path:
    """``cfg.checkpoint`` (a folder, or a bare name under CRS_HOME/checkpoints/pecrs/, so that a
    served config and its training recipe name the same run on any machine); empty: the
    default folder of ``trained_on`` or ``dataset_name``."""
    if not cfg.checkpoint:
        return default_checkpoint(cfg.trained_on or dataset_name)
    if "/" in cfg.checkpoint or "\\" in cfg.checkpoint:
        return Path(cfg.checkpoint).expanduser()
    return default_checkpoint(cfg.checkpoint)


def train_command(dataset_name: str) -> str:
    return f"crs train pecrs --dataset {dataset_name}"


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
    from peft import PeftModel

    settings = get_settings()
    backbone = cfg.backbone or settings.CRS_LLM
    device = best_device(cfg.device or settings.CRS_DEVICE)
    lm, tokenizer = load_with_tokens(backbone, SPECIAL_TOKENS, device)

    item_ids = [item.id for item in dataset.catalog]
    texts = [
        dataset.catalog.item_text(i, title_only=cfg.title_only, drop=cfg.dropped_fields)
        for i in item_ids
    ]
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
        peft_lm = with_lora(lm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    else:
        peft_lm = PeftModel.from_pretrained(lm, checkpoint, is_trainable=True)
    if cfg.gradient_checkpointing:
        checkpoint_layers(peft_lm)
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
        if state["heads"]["bias"].shape != heads.bias.shape:
            # Trained on another catalog (ReDial's, served on MovieLens): the heads read item
            # texts, so they carry over; the feature statistics are this catalog's own, and so
            # is the per-item bias, rescaled to the trained one's spread (ratings outnumber
            # mentions, which would let popularity drown the request).
            fresh, trained = heads.bias.detach(), state["heads"]["bias"]
            spread = trained.std() / fresh.std().clamp(min=1e-6)
            state["heads"]["bias"] = (fresh - fresh.mean()) * spread + trained.mean()
            state["heads"]["items.mean"] = heads.items.mean.detach().clone()
            state["heads"]["items.std"] = heads.items.std.detach().clone()
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
