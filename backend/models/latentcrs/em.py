"""Training LatentCRS by variational EM (Algorithm 1), resumable with the same command.

1. **Warm-up**: the inference model q(m|S) alone, on its recommendation loss (Eq. 16).
2. **Prior**: q̂ fixed, the generative model on L^M (Eq. 11).
3. **EM**, ``em_iterations`` times: the E-step fits q to the generative model's posterior
   (Eq. 13-14, 17), the M-step fits the generative model to the new q̂ (Eq. 11).

Instances are each user's train-view sequence and ``segments`` random segments of it (§5.1's
augmentation), each with a sentence about its next film; a share of them has no history, so a
new user is served from words alone. **S** comes from the frozen SASRec, **x** from the text
encoder, both computed once. After every epoch the valid split is scored (R@5/20, NDCG@5/20),
the evidence bound (Eq. 4) of the training set is logged, and the state is saved; the weights
kept are those of the best valid Recall@20 of the generative model.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from backend.data.base import Dataset
from backend.models.latentcrs import model as lm
from backend.models.latentcrs.config import LatentCRSConfig
from backend.models.latentcrs.intents import behaviour_embeddings, fit_intents, intent_labels
from backend.models.latentcrs.text import TextEmbedder, describe, user_text
from backend.models.sasrec import SASRec, default_checkpoint
from backend.progress import ProgressBar
from backend.registry import save_run_files
from backend.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class Instances:
    """Rows of training or scoring: S, x, the target's catalog index, and the film indices the
    user has seen (excluded from the ranking when scored)."""

    S: torch.Tensor
    x: torch.Tensor
    target: torch.Tensor
    seen: list[list[int]]

    def __len__(self) -> int:
        return len(self.target)

    def batch(self, rows: torch.Tensor, negatives: torch.Tensor | None = None) -> lm.Batch:
        return lm.Batch(self.S[rows], self.x[rows], self.target[rows], negatives)


def _sequence(dataset: Dataset, history) -> list[int]:
    index = dataset.catalog.index
    return [index[i.item_id] for i in history.interactions if i.item_id in index]


def training_sequences(
    dataset: Dataset, cfg: LatentCRSConfig, rng: random.Random
) -> list[tuple[list[int], int]]:
    """(sequence before, target) pairs: each user's last train item after the rest, then
    ``segments`` random cut points (the authors' rule: not in the first or last sixth of the
    window), each also without its history at ``empty_rate``."""
    pairs = []
    low = max(1, cfg.max_history // 6)
    for user_id in sorted(dataset.histories, key=str):
        seq = _sequence(dataset, dataset.histories[user_id])
        if len(seq) < 2:
            continue
        cuts = [len(seq) - 1]
        if len(seq) - 1 > low:
            cuts += [rng.randint(low, len(seq) - 1) for _ in range(cfg.segments)]
        for cut in cuts:
            pairs.append((seq[:cut][-cfg.max_history :], seq[cut]))
            if rng.random() < cfg.empty_rate:
                pairs.append(([], seq[cut]))
    return pairs


class Featurizer:
    """Turns (sequence, text) pairs into S and x with the frozen SASRec and the text encoder."""

    def __init__(self, backbone: SASRec, embedder: TextEmbedder, window: int):
        self.backbone, self.embedder, self.window = backbone, embedder, window

    def __call__(self, seqs: list[list[int]], texts: list[str], cache: bool) -> tuple:
        ones = [[i + 1 for i in s] for s in seqs]  # SASRec's indices are 1-based
        S = behaviour_embeddings(self.backbone.net, ones, self.window)
        return torch.from_numpy(S), torch.from_numpy(self.embedder(texts, cache=cache))


def split_instances(dataset: Dataset, split: str, featurize: Featurizer) -> Instances:
    """One instance per dialogue of a held-out split: the history a model may read there, the
    user's words, and the gold film."""
    histories = dataset.extra["context_histories"][split]
    seqs, texts, targets = [], [], []
    for dialogue in dataset.split(split):
        seqs.append(_sequence(dataset, histories[dialogue.user_id]))
        texts.append(user_text(dialogue))
        targets.append(dataset.catalog.index[dialogue.turns[-1].items[0]])
    S, x = featurize(seqs, texts, cache=True)
    return Instances(S, x, torch.tensor(targets), seqs)


def ranking_metrics(scores: torch.Tensor, data: Instances, ks=(5, 20)) -> dict[str, float]:
    """Recall@K and NDCG@K of the targets, seen films excluded (full catalog, no sampling)."""
    scores = scores.clone()
    for row, seen in enumerate(data.seen):
        scores[row, [s for s in seen if s != data.target[row]]] = float("-inf")
    gold = scores.gather(1, data.target[:, None])
    rank = (scores > gold).sum(1) + 1
    out = {}
    for k in ks:
        hit = rank <= k
        out[f"recall@{k}"] = hit.float().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1 / torch.log2(rank.float() + 1), 0.0).mean().item()
    return out


# ----------------------------------------------------------------------------- the schedule


def schedule(cfg: LatentCRSConfig) -> list[str]:
    """One entry per epoch: "warmup", "prior", "E<i>", "M<i>", or an ablation's own phase."""
    em = [
        f"{s}{i}"
        for i in range(cfg.em_iterations)
        for s in "EM"
        for _ in range(cfg.epochs_per_step)
    ]
    if cfg.ablation == "no_inference":
        return ["rec_only"] * (cfg.prior_epochs + len(em) // 2)
    if cfg.ablation == "direct_kl":
        return ["joint"] * (cfg.warmup_epochs + cfg.prior_epochs + len(em) // 2)
    phases = ["warmup"] * cfg.warmup_epochs + ["prior"] * cfg.prior_epochs
    return phases if cfg.ablation == "no_em" else phases + em


class EMTrainer:
    """Algorithm 1 over prepared instances; ``run`` trains, saving after every epoch."""

    def __init__(
        self, cfg: LatentCRSConfig, intents: torch.Tensor, items: torch.Tensor, text_dim: int
    ):
        self.cfg = cfg
        self.intents = intents
        d = intents.shape[1]
        self.inf = lm.InferenceModel(d, items)
        self.gen = lm.GenerativeModel(d, text_dim, cfg.ffn_hidden, cfg.dropout, items)
        recloss = 0.0 if cfg.ablation == "no_recloss" else 1.0
        self.alpha_m, self.alpha_e = cfg.alpha_m * recloss, cfg.alpha_e * recloss
        self.torch_rng = torch.Generator().manual_seed(cfg.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_name = ""

    def _params(self, phase: str) -> list[torch.nn.Parameter]:
        if phase == "joint":
            return [*self.inf.parameters(), *self.gen.parameters()]
        return list(
            (self.inf if phase in ("warmup",) or phase[0] == "E" else self.gen).parameters()
        )

    def _optimizer_for(self, phase: str) -> torch.optim.Optimizer:
        """A fresh Adam at each new step of the schedule (each E-step, each M-step)."""
        if phase != self.step_name or self.optimizer is None:
            self.optimizer = torch.optim.Adam(self._params(phase), lr=self.cfg.lr)
            self.step_name = phase
        return self.optimizer

    def _negatives(self, n_rows: int) -> torch.Tensor | None:
        if not self.cfg.negatives:
            return None
        n_items = self.gen.items.shape[0]
        return torch.randint(0, n_items, (n_rows, self.cfg.negatives), generator=self.torch_rng)

    def loss(self, phase: str, batch: lm.Batch) -> torch.Tensor:
        cfg, M = self.cfg, self.intents
        if phase == "warmup":
            return lm.warmup_loss(self.inf, M, batch)
        if phase == "rec_only":
            return lm.rec_only_loss(self.gen, M, batch)
        if phase == "joint":
            return lm.direct_kl_loss(
                self.inf, self.gen, M, batch, cfg.lam, self.alpha_m, self.alpha_e
            )
        if phase[0] == "E":
            with torch.no_grad():
                self.gen.eval()
                log_post = lm.posterior(self.gen, M, batch)
                self.gen.train()
            return lm.e_step_loss(self.inf, M, batch, log_post, self.alpha_e)
        with torch.no_grad():  # "prior" and "M<i>": q̂ estimated and fixed
            self.inf.eval()
            log_q_hat = self.inf.log_q(batch.S, M)
            self.inf.train()
        return lm.m_step_loss(self.gen, M, batch, log_q_hat, cfg.lam, self.alpha_m)

    def epoch(self, phase: str, data: Instances) -> float:
        optimizer = self._optimizer_for(phase)
        self.inf.train()
        self.gen.train()
        order = torch.randperm(len(data), generator=self.torch_rng)
        losses = []
        for start in range(0, len(order), self.cfg.batch_size):
            rows = order[start : start + self.cfg.batch_size]
            loss = self.loss(phase, data.batch(rows, self._negatives(len(rows))))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def evidence(self, data: Instances) -> float:
        """The mean evidence lower bound (Eq. 4) over ``data``, exact on the whole catalog."""
        self.inf.eval()
        self.gen.eval()
        batch = data.batch(torch.arange(len(data)))
        log_q = self.inf.log_q(batch.S, self.intents)
        log_f = self.gen.log_f(batch.S, batch.x, self.intents)
        log_pv = self.gen.log_p_target(self.intents, replace(batch, negatives=None))
        return lm.elbo(log_q, log_f, log_pv).mean().item()

    @torch.no_grad()
    def scores(self, data: Instances) -> torch.Tensor:
        self.gen.eval()
        return self.gen.scores(data.S, data.x, self.intents, self.cfg.score)

    def state(self) -> dict:
        """A copy of both networks' weights (a state_dict alone would follow later updates)."""
        return copy.deepcopy(
            {"inference": self.inf.state_dict(), "generative": self.gen.state_dict()}
        )

    def load(self, state: dict) -> None:
        self.inf.load_state_dict(state["inference"])
        self.gen.load_state_dict(state["generative"])


def _relative(path: Path) -> str:
    root = get_settings().checkpoints
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _usage(log_q: torch.Tensor) -> float:
    """Perplexity of the average intent distribution: how many intents are in use."""
    mean = log_q.exp().mean(0)
    return float(torch.exp(-(mean * torch.log(mean + lm.EPS)).sum()))


def train_latentcrs(
    dataset: Dataset,
    cfg: LatentCRSConfig,
    out_dir: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> Path:
    """Train on a held-out view (`movielens-100k-heldout`) and save the checkpoint, its config
    and its metrics in ``out_dir`` (default ``cfg.checkpoint_dir()``); returns the folder."""
    if "context_histories" not in dataset.extra:
        raise ValueError(f"{dataset.name} has no held-out splits; train on movielens-100k-heldout")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir or cfg.checkpoint_dir())
    start = time.perf_counter()
    backbone = SASRec(dataset)  # raises FileNotFoundError without its checkpoint
    embedder = TextEmbedder(cfg.text_encoder, cfg.device)
    featurize = Featurizer(backbone, embedder, cfg.max_history)
    rng = random.Random(cfg.seed)
    pairs = training_sequences(
        dataset, replace(cfg, segments=0) if cfg.ablation == "no_augment" else cfg, rng
    )
    catalog = dataset.catalog
    texts = [describe(catalog[catalog.ids[t]], rng) for _, t in pairs]
    S, x = featurize([s for s, _ in pairs], texts, cache=True)
    train = Instances(S, x, torch.tensor([t for _, t in pairs]), [s for s, _ in pairs])
    valid = split_instances(dataset, "valid", featurize)
    centroids, clusters = fit_intents(S.numpy(), cfg.n_intents, cfg.seed)
    labels = intent_labels(clusters, [catalog.ids[t] for _, t in pairs], catalog, cfg.n_intents)
    items = backbone.net.item_emb.weight[1:].detach().float().cpu()
    trainer = EMTrainer(cfg, torch.from_numpy(centroids), items, x.shape[1])
    log.info(
        "latentcrs: %d training instances, %d valid, K=%d, x %d-d (%s)",
        len(train),
        len(valid),
        cfg.n_intents,
        x.shape[1],
        cfg.text_encoder,
    )

    units = schedule(cfg)
    run_config = {"model": "latentcrs", "dataset": dataset.name, **cfg.training()}
    resume = out_dir / "train_state.pt"
    record: dict = {"epochs": [], "best": None, "best_state": None}
    if resume.is_file():
        saved = torch.load(resume, map_location="cpu", weights_only=False)
        if saved["config"] == run_config:
            trainer.load(saved["nets"])
            record = saved["record"]
            trainer.torch_rng.set_state(saved["torch_rng"])
            if saved["optimizer"] is not None:
                trainer.step_name = saved["step_name"]
                trainer.optimizer = torch.optim.Adam(trainer._params(trainer.step_name), lr=cfg.lr)
                trainer.optimizer.load_state_dict(saved["optimizer"])
            log.info("latentcrs: resuming after epoch %d of %d", len(record["epochs"]), len(units))
    bar = ProgressBar(
        total=len(units), initial=len(record["epochs"]), desc="latentcrs EM", unit="epoch"
    )
    for phase in units[len(record["epochs"]) :]:
        loss = trainer.epoch(phase, train)
        row = {"phase": phase, "loss": loss, "elbo": trainer.evidence(train)}
        if phase != "warmup":
            row["valid"] = ranking_metrics(trainer.scores(valid), valid)
            if record["best"] is None or row["valid"]["recall@20"] > record["best"]["recall@20"]:
                record["best"] = {
                    **row["valid"],
                    "epoch": len(record["epochs"]) + 1,
                    "phase": phase,
                }
                record["best_state"] = trainer.state()
        else:
            with torch.no_grad():
                trainer.inf.eval()
                row["valid_inference"] = ranking_metrics(
                    trainer.inf.rec_logits(valid.S, trainer.intents), valid
                )
        with torch.no_grad():
            row["intents_in_use"] = _usage(trainer.inf.log_q(train.S, trainer.intents))
        record["epochs"].append(row)
        bar.update(1)
        bar.set_postfix(
            phase=phase, loss=f"{loss:.3f}", r20=f"{row.get('valid', {}).get('recall@20', 0):.3f}"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        blob = {
            "config": run_config,
            "nets": trainer.state(),
            "record": record,
            "torch_rng": trainer.torch_rng.get_state(),
            "optimizer": trainer.optimizer.state_dict() if trainer.optimizer else None,
            "step_name": trainer.step_name,
        }
        torch.save(blob, resume.with_suffix(".tmp"))
        resume.with_suffix(".tmp").replace(resume)
        if on_epoch:
            on_epoch(row)
    bar.close()
    torch.save(
        {
            "nets": record["best_state"] or trainer.state(),
            "intents": torch.from_numpy(centroids),
            "labels": labels,
            "item_ids": catalog.ids,
            "text_encoder": cfg.text_encoder,
            # Relative to CRS_HOME's checkpoints when under it, so a moved CRS_HOME still loads.
            "backbone": _relative(
                Path(backbone.config.checkpoint or default_checkpoint(dataset.name))
            ),
        },
        out_dir / "model.pt",
    )
    metrics = {
        "valid_best": record["best"],
        "epochs": record["epochs"],
        "instances": {"train": len(train), "valid": len(valid)},
        "seconds": time.perf_counter() - start,
    }
    save_run_files(out_dir, run_config, metrics)
    resume.unlink(missing_ok=True)
    log.info("latentcrs saved to %s (valid best %s)", out_dir, json.dumps(record["best"]))
    return out_dir
