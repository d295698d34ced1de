"""LatentCRS's two networks and their losses (§4.2), read top to bottom like the paper.

- The **inference model** q(m|S) (Eq. 12) attends from the user's behaviour embedding **S** to
  the K intent vectors **m**; its attention-weighted intent **r** (Eq. 15) recommends (Eq. 16).
- The **generative model** has p(m|S,x) (Eq. 5), from the behaviour and the text embedding, and
  p(v|m) (Eq. 6-7 under §5.5's v ⊥ (S,x) | m), an intent's distribution over the catalog.
- p(v|S,x) = Σ_j p(v|m_j) p(m_j|S,x) (Eq. 2) is what LatentCRS ranks by.

The intent vectors are the K-means centroids of **S** (Eq. 3) and stay fixed: they are the anchor
that carries the collaborative signal into the text side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-9


@dataclass
class Batch:
    """Instances: behaviour embeddings S (B, d), text embeddings x (B, dx), target indices (B,)
    into the catalog, and sampled negatives (B, n) when InfoNCE samples (Eq. 8)."""

    S: torch.Tensor
    x: torch.Tensor
    target: torch.Tensor
    negatives: torch.Tensor | None = None


class InferenceModel(nn.Module):
    """q(m|S) = softmax_j(W_q S (W_k m_j)^T / √d) (Eq. 12), and its recommender (Eq. 15-16)."""

    def __init__(self, d: int, items: torch.Tensor):
        super().__init__()
        self.W_q = nn.Linear(d, d, bias=False)
        self.W_k = nn.Linear(d, d, bias=False)
        self.W_e = nn.Linear(d, d, bias=False)
        self.register_buffer("items", items.clone())  # the behaviour model's item embeddings

    def log_q(self, S: torch.Tensor, intents: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.W_q(S) @ self.W_k(intents).T / math.sqrt(S.shape[-1]), -1)

    def rec_logits(self, S: torch.Tensor, intents: torch.Tensor) -> torch.Tensor:
        """Eq. 16's logits r^u W_e v over the catalog, r^u = Σ_j q(m_j|S) m_j (Eq. 15)."""
        r = self.log_q(S, intents).exp() @ intents
        return self.W_e(r) @ self.items.T


class GenerativeModel(nn.Module):
    """p(m|S,x) (Eq. 5) and p(v|m) (Eq. 7 with §5.5's independence)."""

    def __init__(self, d: int, text_dim: int, hidden: int, dropout: float, items: torch.Tensor):
        super().__init__()
        self.project_x = nn.Linear(text_dim, d)  # the projection Eq. 5 leaves out "for brevity"
        self.ffn = nn.Sequential(
            nn.Linear(2 * d, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, d),
        )
        self.W_m = nn.Linear(d, d, bias=False)
        self.W_j = nn.Linear(d, d, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        self.items = nn.Parameter(items.clone())  # v, started from the behaviour model's

    def log_f(self, S: torch.Tensor, x: torch.Tensor, intents: torch.Tensor) -> torch.Tensor:
        """log p(m_j|S,x) = log softmax_j(FFN([S; x]) (W_m m_j)^T) (Eq. 5), (B, K)."""
        u = self.ffn(torch.cat([S, self.project_x(x)], -1))
        return F.log_softmax(u @ self.W_m(intents).T, -1)

    def g(self, intents: torch.Tensor) -> torch.Tensor:
        """g(v, m_j) = (W_j m_j)(W_v v)^T (Eq. 7), (K, n_items): the density ratio p(v|m)/p(v)."""
        return self.W_j(intents) @ self.W_v(self.items).T

    def log_p_target(self, intents: torch.Tensor, batch: Batch) -> torch.Tensor:
        """log p(v|m_j) of each instance's target for every intent (B, K): the softmax over the
        whole catalog, or InfoNCE's over the target and its sampled negatives (Eq. 8)."""
        g = self.g(intents)
        if batch.negatives is None:
            return F.log_softmax(g, -1)[:, batch.target].T
        columns = torch.cat([batch.target[:, None], batch.negatives], 1)  # (B, 1 + n)
        picked = g[:, columns]  # (K, B, 1 + n)
        return F.log_softmax(picked, -1)[..., 0].T

    def scores(self, S: torch.Tensor, x: torch.Tensor, intents: torch.Tensor, kind: str):
        """Ranking scores over the catalog (B, n_items): log Σ_j p(m_j|S,x) p(v|m_j) (Eq. 2,
        "mixture"), or Σ_j p(m_j|S,x) g(v,m_j) (Eq. 10's h, "logit")."""
        log_f = self.log_f(S, x, intents)
        if kind == "logit":
            return log_f.exp() @ self.g(intents)
        return torch.logsumexp(log_f[:, :, None] + F.log_softmax(self.g(intents), -1)[None], 1)


# ----------------------------------------------------------------------------- the losses


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def elbo(log_q: torch.Tensor, log_f: torch.Tensor, log_pv: torch.Tensor) -> torch.Tensor:
    """Eq. 4 per instance: Σ_j q_j (log p(v|m_j) + log p(m_j|S,x) − log q_j)."""
    return (log_q.exp() * (log_pv + log_f - log_q)).sum(-1)


def m_step_loss(
    gen: GenerativeModel,
    intents: torch.Tensor,
    batch: Batch,
    log_q_hat: torch.Tensor,
    lam: float,
    alpha: float,
) -> torch.Tensor:
    """L^M = L_infoNCE + λ KL(q̂ ‖ p(m|S,x)) + α^M L_rec^M (Eq. 11), q̂ from the fixed q."""
    log_f = gen.log_f(batch.S, batch.x, intents)
    nce = -(log_q_hat.exp() * gen.log_p_target(intents, batch)).sum(-1)  # Eq. 8
    loss = nce + lam * kl(log_q_hat, log_f)
    if alpha:
        h = log_f.exp() @ gen.g(intents)  # Eq. 10's h as logits over the catalog
        loss = loss + alpha * F.cross_entropy(h, batch.target, reduction="none")
    return loss.mean()


def posterior(gen: GenerativeModel, intents: torch.Tensor, batch: Batch) -> torch.Tensor:
    """log p(m_j|v,S,x) ∝ g(v,m_j) f(m_j,S,x) (Eq. 13), normalised over the intents."""
    log_f = gen.log_f(batch.S, batch.x, intents)
    return F.log_softmax(gen.log_p_target(intents, batch) + log_f, -1)


def e_step_loss(
    inf: InferenceModel,
    intents: torch.Tensor,
    batch: Batch,
    log_post: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """L^E = KL(q(m|S) ‖ p(m|v,S,x)) + α^E L_rec^E (Eq. 14, 16, 17), the posterior fixed."""
    loss = kl(inf.log_q(batch.S, intents), log_post)
    if alpha:
        loss = loss + alpha * F.cross_entropy(
            inf.rec_logits(batch.S, intents), batch.target, reduction="none"
        )
    return loss.mean()


def warmup_loss(inf: InferenceModel, intents: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Algorithm 1, line 1: the inference model's recommendation loss alone (Eq. 16)."""
    return F.cross_entropy(inf.rec_logits(batch.S, intents), batch.target)


def direct_kl_loss(
    inf: InferenceModel,
    gen: GenerativeModel,
    intents: torch.Tensor,
    batch: Batch,
    lam: float,
    alpha_m: float,
    alpha_e: float,
) -> torch.Tensor:
    """Table 5's "direct KL Align": both models at once, q not held fixed, no alternation."""
    log_q = inf.log_q(batch.S, intents)
    loss = m_step_loss(gen, intents, batch, log_q, lam, alpha_m)
    return loss + alpha_e * F.cross_entropy(inf.rec_logits(batch.S, intents), batch.target)


def rec_only_loss(gen: GenerativeModel, intents: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Table 5's "w/o Inference Model": the generative model with L_rec^M alone."""
    log_f = gen.log_f(batch.S, batch.x, intents)
    return F.cross_entropy(log_f.exp() @ gen.g(intents), batch.target)
