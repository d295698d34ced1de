"""The collaborative side of LatentCRS (§4.1): behaviour embeddings **S** from a trained SASRec,
and K discrete intents as the K-means centroids of those embeddings (Eq. 3).

The paper's recommender is ICLRec; SASRec is the project's, and its user state after the last
item of the sequence is **S** (d = its hidden size).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans

from backend.catalog import Catalog
from backend.models.sasrec import SASRecNet, pad_left


@torch.inference_mode()
def behaviour_embeddings(net: SASRecNet, seqs: Sequence[Sequence[int]], window: int) -> np.ndarray:
    """**S** for each sequence of 1-based item indices (its last ``window`` items; an empty one
    gives the network's state for no history), (N, d) float32."""
    device = next(net.parameters()).device
    rows = []
    for start in range(0, len(seqs), 512):
        chunk = [pad_left(list(s)[-window:], net.max_len) for s in seqs[start : start + 512]]
        rows.append(net(torch.tensor(chunk, device=device))[:, -1].float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, net.item_emb.embedding_dim), "float32")


def fit_intents(S: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """M = K-Means({S^u}) (Eq. 3): the centroids (k, d) and each row's cluster."""
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(S)
    return km.cluster_centers_.astype(np.float32), km.labels_


def intent_labels(
    clusters: np.ndarray, targets: Sequence[str], catalog: Catalog, k: int
) -> list[str]:
    """A name for each intent, for the trace: the commonest genres and decade of the films its
    training instances went on to watch ("Drama · Romance · 1990s")."""
    labels = []
    for j in range(k):
        items = [catalog[t] for t, c in zip(targets, clusters, strict=True) if c == j]
        genres = Counter(g for item in items for g in item.genres)
        decades = Counter(f"{item.year // 10 * 10}s" for item in items if item.year)
        top = [g for g, _ in genres.most_common(2)] + [d for d, _ in decades.most_common(1)]
        labels.append(" · ".join(top) or "no films")
    return labels
