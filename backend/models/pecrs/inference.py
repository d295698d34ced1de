"""PECRS at inference: recall over every item, rerank of the shortlist, the recommend decision, and the reply (§3.6), served as a `CRSModel`."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from backend.data import load_dataset
from backend.data.base import Dataset
from backend.eval.metrics import item_presence_f1
from backend.models.pecrs.config import ITEM, REC, REC_END, SEP, PECRSConfig
from backend.models.pecrs.inputs import slot
from backend.models.pecrs.model import (
    PECRSNet,
    build,
    build_batch,
    checkpoint_dir,
    save_checkpoint,
    train_command,
)
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, register, timed
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, Turn, UserHistory

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


def rec_states(
    net: PECRSNet, contexts: Sequence[list[int]], chunk: int = 8
) -> tuple[torch.Tensor, RecDecision]:
    """The LM's state at a [REC] appended to each context (the recall query, Eq. 3), and the
    recommend decision from the state before it: p([REC] next). Contexts go through the LM in
    chunks of similar length, so short ones are not padded to the longest of the batch."""
    rec = net.special[REC]
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    states: list[torch.Tensor] = [torch.empty(0)] * len(contexts)
    logits: list[torch.Tensor] = [torch.empty(0)] * len(contexts)
    with torch.inference_mode():
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            part = [contexts[r] for r in rows]
            batch = build_batch(
                [c + [rec] for c in part],
                [len(c) for c in part],
                [[] for _ in part],
                [None] * len(part),
                [len(c) for c in part],
                net.device,
            )
            hidden = net.hidden(batch)
            idx = torch.arange(len(part), device=net.device)
            before = net.lm.get_output_embeddings()(hidden[idx, batch.rec_at - 1]).float()
            for j, r in enumerate(rows):
                states[r], logits[r] = hidden[j, batch.rec_at[j]], before[j]
    next_logits = torch.stack(logits)
    decision = RecDecision(next_logits.softmax(-1)[:, rec], next_logits.argmax(-1) == rec)
    return torch.stack(states), decision


def rank_items(
    net: PECRSNet,
    contexts: Sequence[list[int]],
    exclude: Sequence[set[int]],
    all_items: torch.Tensor,
    rerank: bool | None = None,
) -> tuple[list[list[tuple[int, float]]], RecDecision]:
    """Recall then (``rerank``, default the config's) rerank for each context: (item row, score)
    best first, and the recommend decision's inputs."""
    cfg = net.cfg
    rec = net.special[REC]
    queries, wants = rec_states(net, contexts)
    with torch.inference_mode():
        shortlists = retrieve(net, queries, exclude, cfg.m_infer, all_items)
        if not (cfg.rerank if rerank is None else rerank):
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


def generate_responses(net: PECRSNet, prompts: Sequence[list[int]]) -> list[tuple[str, int]]:
    """Decode a response after each prompt (left-padded embeddings), special tokens kept, with
    the number of tokens it took."""
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
        texts.append((tokenizer.decode(row, skip_special_tokens=False), len(row)))
    return texts


def fill_items(text: str, titles: Sequence[str]) -> str:
    """The generated text for people: each [ITEM] becomes the next recommended title."""
    for token in (SEP, REC, REC_END):
        text = text.replace(token, " ")
    for title in titles:
        text = text.replace(ITEM, title, 1)
    return " ".join(text.replace(ITEM, "").split())


def all_item_vectors(net: PECRSNet) -> torch.Tensor:
    """Eq. 1 for every item, computed once per inference (or dev evaluation)."""
    with torch.inference_mode():
        return net.heads.items.h_item(net.pooled_items())


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
        path = checkpoint_dir(cfg, dataset.name)
        if not (path / "heads.pt").is_file():
            raise FileNotFoundError(
                f"no pecrs checkpoint at {path}; train one with `{train_command(trained_on)}"
                + (f" --set checkpoint={cfg.checkpoint}`" if cfg.checkpoint else "`")
            )
        trained = json.loads((path / "config.json").read_text())
        # The checkpoint fixes the network's shape and inputs; these keys come from it.
        for key in ("lora_r", "lora_alpha", "item_tokens", "title_only", "temperature"):
            setattr(cfg, key, trained[key])
        cfg.drop_fields = trained.get("drop_fields", "")  # older checkpoints kept every field
        if trained.get("rerank") is False:  # training found that rerank does not help on dev
            cfg.rerank = False
        if cfg.rec_threshold < 0:  # unless given, the threshold chosen on dev in training
            cfg.rec_threshold = float(trained.get("rec_threshold", -1.0))
        cfg.backbone = trained["backbone_resolved"]
        self.filled = 0  # serving items that took cast, crew or plot from the training catalog
        source = cfg.trained_on
        if cfg.fill_metadata and source and source != dataset.name:
            catalog, self.filled = dataset.catalog.filled_from(load_dataset(source).catalog)
            dataset = replace(dataset, catalog=catalog)
        self.built = build(dataset, cfg, checkpoint=path)
        self.net = self.built.net
        self.net.eval()
        self.all_items = all_item_vectors(self.net)
        self.version = f"{Path(self.built.backbone).name}:{path.name}"
        if self.filled:
            self.version += f" ({self.filled} items described from {source})"
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
        net = self.net
        prompts = [
            c + ([net.special[REC], slot(r[0][0]), net.special[REC_END]] if w and r else [])
            for c, r, w in zip(contexts, ranked, wants, strict=True)
        ]
        texts = (
            generate_responses(net, prompts) if self.config.generate else [("", 0)] * len(prompts)
        )
        replies = []
        for ranking, want, p, (raw, generated), context, prompt in zip(
            ranked, wants, decision.p.tolist(), texts, contexts, prompts, strict=True
        ):
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
            if recommends and not self.config.generate:  # ranking only: the baselines' wording
                text = recommendation_text([self.catalog[s.item_id] for s in items[:3]])
            elif recommends and ITEM not in raw:
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
                Reply(
                    text=text,
                    items=items,
                    recommends=recommends,
                    trace=trace,
                    model=self.name,
                    # The LM reads the context (and the item slot) and writes the response.
                    prompt_tokens=len(prompt if self.config.generate else context),
                    completion_tokens=generated,
                )
            )
        return replies

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]

    def reference_nll(
        self, dialogues: Sequence[Dialogue], references: Sequence[Turn]
    ) -> list[tuple[float, int]] | None:
        """Summed negative log-likelihood and token count of each reference response, given its
        context and, when it names one, its gold item (Eq. 6): the perplexity of Table 3. None
        when the model only ranks (``generate=false``): it would double a ranking evaluation."""
        if not self.config.generate:
            return None
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
