"""The CRS: UniMIND (Deng et al. 2023) as §3.3 uses it, on a decoder-only backbone.

One LM reads every task as a sequence X_T + Z_T with the segment tokens ``[user] [system]
[understand] [elicit] [recommend]`` (and ``[LLM]`` for §3.5's hints) and writes the understanding
pairs, the attribute to ask and the response (Eq. 1). Recommendation is a classifier (Eq. 2):
the LM's state at the closing ``[recommend]`` stands in for Enc(X_R) (a decoder has no separate
encoder), each item has an embedding e_i = W_p t_i + δ_i (t_i the frozen LM state of its catalog
line, so films never seen in training get one too; δ_i trainable, from 0), and the score is
r_i = e_i · (W_c u) + b_i over the catalog, trained by cross-entropy (Eq. 3). With the LLM's pick
ê (§3.5, Eq. 4) the query becomes W_c u + W_f ê; W_f starts at 0, so the fused classifier starts
as Eq. 2 and learns how much the LLM's pick is worth. Training has two stages (P:123):
recommendation alone, then all four tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from backend.catalog import Catalog
from backend.llm import (
    best_device,
    get_llm,
    load_with_tokens,
    option_logprobs,
    with_lora,
)
from backend.models.presales.candidates import describe
from backend.models.presales.prompts import SPECIAL_TOKENS, crs_sequence, crs_target
from backend.models.presales.schema import TASKS, Example
from backend.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class CRSConfig:
    backbone: str = ""  # empty = CRS_LLM (the bundled SmolLM2-135M-Instruct)
    device: str = ""  # empty = CRS_DEVICE
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 2e-4  # LoRA and the special-token rows
    head_lr: float = 1e-4  # W_p, W_c, W_f, the null vector (1e-3: dev loss rose at every check)
    stage1_steps: int = 40  # recommendation only (the warm-up stage)
    stage2_steps: int = 160  # all four tasks, one example of each per step
    batch_size: int = 4  # stage 1
    max_tokens: int = 448
    fusion: bool = False  # Eq. 4: the LLM's pick joins the user representation
    hints: bool = False  # X': the LLM's outputs appended as "[LLM] ..."
    eval_every: int = 40
    dev_examples: int = 16  # per task, for the dev loss that picks the kept weights
    seed: int = 0


# ----------------------------------------------------------------------------- modules


class ItemTable:
    """Every item of the catalogs the CRS knows, keyed ``<dataset>:<id>``, with t_i (the frozen
    backbone's mean-pooled state of `describe(item)`, cached on disk)."""

    def __init__(self, catalogs: dict[str, Catalog], backbone: str):
        self.keys: list[str] = []
        self.rows: dict[str, torch.Tensor] = {}
        texts = []
        for name, catalog in catalogs.items():
            start = len(self.keys)
            for item in catalog:
                self.keys.append(f"{name}:{item.id}")
                texts.append(describe(item))
            self.rows[name] = torch.arange(start, len(self.keys))
        self.index = {k: i for i, k in enumerate(self.keys)}
        digest = hashlib.sha1(json.dumps([backbone, texts]).encode()).hexdigest()[:16]
        cache = get_settings().cache / "presales" / f"items-{digest}.pt"
        if cache.is_file():
            self.text = torch.load(cache)
        else:
            log.info("presales: encoding %d item lines with %s", len(texts), backbone)
            vectors = get_llm(backbone, base_url="").embed(texts, batch_size=64)
            self.text = torch.tensor(vectors)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.text, cache)
        # Mean-pooled states of a small LM all point one way (anisotropy): standardised per
        # dimension, the films differ by more than a rounding error.
        centred = self.text - self.text.mean(0)
        self.text = centred / (centred.std(0) + 1e-6) / self.text.shape[1] ** 0.5

    def row(self, dataset: str, item_id: str) -> int | None:
        return self.index.get(f"{dataset}:{item_id}")


class ItemEmbeddings(nn.Module):
    """e_i = W_p t_i + δ_i (W_p from the identity, δ from 0)."""

    def __init__(self, text: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("text", text.float(), persistent=False)
        self.proj = nn.Linear(text.shape[1], hidden, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            n = min(hidden, text.shape[1])
            self.proj.weight[:n, :n] = torch.eye(n)
        self.delta = nn.Parameter(torch.zeros(len(text), hidden))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.proj(self.text[rows]) + self.delta[rows]


class FusedCLS(nn.Module):
    """Eq. 2, r_i = e_i · (W_c u) + b_i, and Eq. 4, r'_i = e_i · (W_c u + W_f ê) + b_i, with ê
    the LLM's pick (a learned null vector when it picked nothing); W_f = 0 at the start."""

    def __init__(self, hidden: int, n_items: int):
        super().__init__()
        self.user = nn.Linear(hidden, hidden, bias=False)  # W_c
        self.fuse = nn.Linear(hidden, hidden, bias=False)  # W_f
        # W_c from 0 too: a random projection of the LM state only adds noise to the item prior b.
        nn.init.zeros_(self.user.weight)
        nn.init.zeros_(self.fuse.weight)
        self.null = nn.Parameter(torch.randn(hidden) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(
        self,
        u: torch.Tensor,
        items: torch.Tensor,
        rows: torch.Tensor,
        picked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, N) of ``items`` (N, H, rows ``rows`` of the table) for users ``u`` (B, H);
        ``picked`` (B, H) is ê, or None for Eq. 2."""
        query = self.user(u)
        if picked is not None:
            query = query + self.fuse(picked)
        return query @ items.T + self.bias[rows]


class UniCRS(nn.Module):
    """The LoRA-wrapped LM, the segment tokens' rows, the item embeddings and the classifier."""

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        table: ItemTable,
        catalogs: dict[str, Catalog],
        cfg: CRSConfig,
    ):
        super().__init__()
        self.lm = lm
        self.catalogs = catalogs
        self.tokenizer = tokenizer
        self.table = table
        self.cfg = cfg
        hidden = lm.config.hidden_size
        self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        weight = lm.get_input_embeddings().weight
        # The segment tokens train as their own rows; the tied vocabulary stays frozen.
        self.special_rows = nn.Parameter(weight[self.special_ids].detach().clone())
        self.items = ItemEmbeddings(table.text, hidden)
        self.cls = FusedCLS(hidden, len(table.keys))
        self.recommend_id = self.special_ids[SPECIAL_TOKENS.index("[recommend]")]

    @property
    def device(self) -> torch.device:
        return self.special_rows.device

    def sync_special(self) -> None:
        """Write the trained rows into the embedding, for generate() and option scoring."""
        with torch.no_grad():
            self.lm.get_input_embeddings().weight[self.special_ids] = self.special_rows

    # --- sequences

    def encode(self, example: Example, hint: str = "") -> tuple[list[int], list[int]]:
        """(ids, labels): X_T + Z_T, then the target for U/A/G; left-cut to ``max_tokens``."""
        text = crs_sequence(example, self.catalogs[example.dataset], hint)
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        target: list[int] = []
        if example.task != "recommend":
            target = self.tokenizer(" " + crs_target(example), add_special_tokens=False)[
                "input_ids"
            ][: self.cfg.max_tokens // 2] + [self.tokenizer.eos_token_id]
        prompt = prompt[-(self.cfg.max_tokens - len(target)) :]
        return prompt + target, [-100] * len(prompt) + target

    def hidden(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states (B, T, H) of right-padded ``rows`` and their lengths."""
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        mask = (torch.arange(width, device=self.device)[None] < lengths[:, None]).long()
        embeds = self.lm.get_input_embeddings()(ids)
        which = ids[..., None] == torch.tensor(self.special_ids, device=self.device)
        special = which.to(embeds.dtype) @ self.special_rows
        embeds = torch.where(which.any(-1, keepdim=True), special, embeds)
        body = self.lm.get_base_model().base_model
        return body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, lengths

    def scores(
        self, u: torch.Tensor, dataset: str, picks: list[int | None] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Catalog scores (B, N) for ``dataset`` and the table rows they are for."""
        rows = self.table.rows[dataset].to(self.device)
        items = self.items(rows)
        picked = None
        if self.cfg.fusion and picks is not None:
            vectors = [
                self.cls.null if p is None else self.items(torch.tensor([p], device=self.device))[0]
                for p in picks
            ]
            picked = torch.stack(vectors)
        return self.cls(u, items, rows, picked), rows

    # --- losses (Eq. 1, Eq. 3 / Eq. 5)

    def loss(self, batch: list[tuple[Example, str, int | None]]) -> torch.Tensor:
        """The mean loss of (example, [LLM] hint, LLM pick's table row) triples: target NLL for
        understanding, elicitation and generation; catalog cross-entropy for recommendation."""
        encoded = [self.encode(e, h) for e, h, _ in batch]
        hidden, lengths = self.hidden([ids for ids, _ in encoded])
        losses = []
        labels = [lab for _, lab in encoded]
        for b, (example, _, pick) in enumerate(batch):
            if example.task == "recommend":
                u = hidden[b, lengths[b] - 1][None]
                logits, rows = self.scores(u, example.dataset, [pick])
                logits = self._mask_mentioned(logits, example, rows)
                gold = self.table.row(example.dataset, example.gold)
                target = (rows == gold).nonzero()[0]
                losses.append(F.cross_entropy(logits, target))
            else:
                lab = torch.tensor(labels[b][1:], device=self.device)
                keep = lab != -100
                states = hidden[b, : len(labels[b]) - 1][keep]
                logits = self.lm.get_base_model().get_output_embeddings()(states)
                losses.append(F.cross_entropy(logits.float(), lab[keep]))
        return torch.stack(losses).mean()

    def _mask_mentioned(
        self, logits: torch.Tensor, example: Example, rows: torch.Tensor
    ) -> torch.Tensor:
        banned = [self.table.row(example.dataset, i) for i in example.mentioned]
        banned = [r for r in banned if r is not None]
        if not banned:
            return logits
        mask = torch.isin(rows, torch.tensor(banned, device=self.device))
        return logits.masked_fill(mask[None], -torch.inf)

    # --- inference

    @torch.no_grad()
    def rank(self, example: Example, pick: int | None = None) -> dict[str, float]:
        """Every catalog item's score for a recommendation example (mentioned films left out)."""
        ids, _ = self.encode(example)
        hidden, lengths = self.hidden([ids])
        logits, rows = self.scores(hidden[0, lengths[0] - 1][None], example.dataset, [pick])
        logits = self._mask_mentioned(logits, example, rows)[0]
        prefix = len(example.dataset) + 1
        return {
            self.table.keys[r][prefix:]: float(s)
            for r, s in zip(rows.tolist(), logits.tolist(), strict=True)
            if s > -float("inf")
        }

    @torch.no_grad()
    def generate(self, example: Example, hint: str, max_new_tokens: int) -> str:
        """Greedy text for an understanding or generation example (segment tokens never written)."""
        ids, labels = self.encode(example, hint)
        prompt = [i for i, lab in zip(ids, labels, strict=True) if lab == -100]
        out = self.lm.generate(
            input_ids=torch.tensor([prompt], device=self.device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            bad_words_ids=[[i] for i in self.special_ids],
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()

    @torch.no_grad()
    def option_scores(self, example: Example, hint: str, options: list[str]) -> list[float]:
        """Each option's mean token log-likelihood after X_A + Z_A (elicitation)."""
        ids, labels = self.encode(example, hint)
        prompt = self.tokenizer.decode(
            [i for i, lab in zip(ids, labels, strict=True) if lab == -100]
        )
        scores, _ = option_logprobs(
            self.lm, self.tokenizer, prompt, [" " + o for o in options], mean=True
        )
        return scores.tolist()


# ----------------------------------------------------------------------------- building, saving


def load_backbone(backbone: str, device: torch.device) -> tuple[Any, Any]:
    """The backbone (frozen, fp32) and its tokenizer with the segment tokens added."""
    lm, tokenizer = load_with_tokens(backbone, SPECIAL_TOKENS, device)
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, tokenizer


def build_crs(
    catalogs: dict[str, Catalog],
    cfg: CRSConfig,
    checkpoint: Path | None = None,
    counts: dict[str, Counter[str]] | None = None,
) -> UniCRS:
    """A fresh CRS over ``catalogs`` (dataset name -> catalog), or the one saved at ``checkpoint``
    (an item the checkpoint does not know starts from its text: δ = 0, the mean bias).

    A fresh b_i starts at log(1 + the item's train count) from ``counts`` (per dataset): a few
    hundred recommendations cannot teach a prior over thousands of films, and ReDial's
    recommendations lean on popular ones."""
    from peft import PeftModel

    settings = get_settings()
    backbone = cfg.backbone or settings.CRS_LLM
    device = best_device(cfg.device or settings.CRS_DEVICE)
    torch.manual_seed(cfg.seed)
    lm, tokenizer = load_backbone(backbone, device)
    table = ItemTable(catalogs, backbone)
    if checkpoint is None:
        peft_lm = with_lora(lm, cfg.lora_r, cfg.lora_alpha, 0.0)
    else:
        peft_lm = PeftModel.from_pretrained(lm, checkpoint, is_trainable=True)
    net = UniCRS(peft_lm, tokenizer, table, catalogs, cfg).to(device)
    if checkpoint is None and counts:
        with torch.no_grad():
            for i, key in enumerate(table.keys):
                name, _, item_id = key.partition(":")
                net.cls.bias[i] = math.log1p(counts.get(name, Counter()).get(item_id, 0))
    if checkpoint is not None:
        saved = torch.load(checkpoint / "heads.pt", map_location=device)
        state = saved["heads"]
        known = {k: i for i, k in enumerate(saved["keys"])}
        here = [known.get(k) for k in table.keys]
        with torch.no_grad():
            for name in ("items.delta", "cls.bias"):
                old = state.pop(name)
                fresh = torch.zeros((len(here), *old.shape[1:]), device=device)
                if name == "cls.bias":
                    fresh += old.mean()
                for i, j in enumerate(here):
                    if j is not None:
                        fresh[i] = old[j]
                state[name] = fresh
        net.load_state_dict({**net.state_dict(), **state})
    net.sync_special()
    return net


def save_crs(net: UniCRS, out_dir: Path) -> None:
    """LoRA (peft's format) and the heads with the item keys they are for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # The resized embedding is the base's plus mean rows: the trained rows are in heads.pt.
    net.lm.save_pretrained(out_dir, save_embedding_layers=False)
    heads = {k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("lm.")}
    torch.save({"heads": heads, "keys": net.table.keys}, out_dir / "heads.pt")


def config_json(cfg: CRSConfig) -> dict[str, Any]:
    return {"model": "presales-crs", **asdict(cfg)}


# ----------------------------------------------------------------------------- training


Hints = dict[str, tuple[str, str | None]]  # example id -> ([LLM] text, the LLM's pick's item id)


def train_crs(
    train: dict[str, list[Example]],
    dev: dict[str, list[Example]],
    catalogs: dict[str, Catalog],
    cfg: CRSConfig,
    out_dir: Path,
    hints: Hints | None = None,
    counts: dict[str, Counter[str]] | None = None,
) -> dict[str, Any]:
    """Stage 1 (recommendation) then stage 2 (all tasks, one example of each per step); the
    weights with the lowest dev loss are saved in ``out_dir``; returns the run record."""
    import random

    from backend.models.presales.trainer import Schedule, run_steps

    hints = hints or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    net = build_crs(catalogs, cfg, counts=counts)

    def triple(example: Example) -> tuple[Example, str, int | None]:
        text, pick = hints.get(example.example_id, ("", None))
        row = net.table.row(example.dataset, pick) if pick else None
        # Recommendation takes the LLM through Eq. 4 only: its letters mean nothing to the CRS.
        shown = cfg.hints and example.task != "recommend"
        return example, text if shown else "", row

    dev_rows = [triple(e) for task in dev.values() for e in task[: cfg.dev_examples]]

    def dev_loss(tasks: tuple[str, ...] = TASKS) -> float:
        rows = [r for r in dev_rows if r[0].task in tasks]
        return sum(net.loss([r]).item() for r in rows) / max(len(rows), 1)

    groups = [
        {
            "params": [
                p for n, p in net.named_parameters() if p.requires_grad and n.startswith("lm.")
            ]
        },
        {"params": [net.special_rows], "lr": cfg.lr},
        {
            "params": [
                net.items.proj.weight,
                net.cls.user.weight,
                net.cls.fuse.weight,
                net.cls.null,
            ],
            "lr": cfg.head_lr,
        },
        # One row per film, most seen once: at the shared rate they memorise the train golds.
        {"params": [net.items.delta, net.cls.bias], "lr": cfg.lr},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    run_config = {**config_json(cfg), "train": {t: len(v) for t, v in train.items()}}
    stages = {}
    stage1 = out_dir / "stage1.pt"
    tasks = [t for t in train if train[t]]

    def stage1_batch(rng: random.Random) -> torch.Tensor:
        return net.loss([triple(e) for e in rng.sample(train["recommend"], cfg.batch_size)])

    def stage2_batch(rng: random.Random) -> torch.Tensor:
        return net.loss([triple(rng.choice(train[t])) for t in tasks])

    def keep(path: Path) -> None:
        torch.save(
            {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}, path
        )

    def load(path: Path) -> None:
        saved = torch.load(path, map_location=net.device)
        named = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                named[name].copy_(value)

    best = out_dir / "best.pt"
    if not stage1.is_file():
        stages["stage1"] = run_steps(
            "presales-crs stage 1",
            net,
            optimizer,
            stage1_batch,
            lambda: dev_loss(("recommend",)),  # what stage 1 trains
            lambda: keep(best),
            Schedule(cfg.stage1_steps, max(cfg.stage1_steps // 4, 1)),
            out_dir / "stage1_state.pt",
            {**run_config, "stage": 1},
            cfg.seed,
        )
        load(best)
        keep(stage1)
        (out_dir / "stage1.json").write_text(json.dumps(stages["stage1"]))
    else:
        load(stage1)
        stages["stage1"] = json.loads((out_dir / "stage1.json").read_text())
    stages["stage2"] = run_steps(
        "presales-crs stage 2",
        net,
        optimizer,
        stage2_batch,
        dev_loss,
        lambda: keep(best),
        Schedule(cfg.stage2_steps, cfg.eval_every),
        out_dir / "stage2_state.pt",
        {**run_config, "stage": 2},
        cfg.seed + 1,
    )
    load(best)
    net.sync_special()
    save_crs(net, out_dir)
    best.unlink(missing_ok=True)
    return stages
