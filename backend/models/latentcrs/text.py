"""The language side of LatentCRS (§4.2.1): what a user says, as the vector **x**.

With ``smollm2`` the vector is the LLM's last-token hidden state under the paper's prompt
(`This sentence: "…" means in one word:`, after Jiang et al. 2023); with ``minilm`` it is the
sentence encoder's. Vectors are cached on disk by text, as the paper pre-computes them (§5.1).

Training instances need a sentence for each target too. The paper has its simulator describe
every one; here the test and valid targets have the LLM simulator's lines, and the training
targets a seeded mix of phrasings of the same attributes (`describe`), some leaving out the decade
or a genre as the simulator's looser lines do.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np

from backend.settings import get_settings
from backend.simulator import attributes
from backend.types import Dialogue, Item

log = logging.getLogger(__name__)

PROMPT = 'This sentence: "{}" means in one word:'
_PHRASINGS = (
    "I'm looking for {}.",
    "I want to watch {}.",
    "Can you recommend {}?",
    "{}, please.",
    "Any ideas for {}?",
    "I'd like {}.",
)


def describe(target: Item, rng: random.Random) -> str:
    """A user's request for ``target`` from its attributes (never its title), in one of several
    phrasings, sometimes with only one genre or without the decade."""
    item = target
    if target.genres and rng.random() < 0.3:
        item = item.model_copy(update={"genres": target.genres[:1]})
    if target.year and rng.random() < 0.25:
        item = item.model_copy(update={"year": None})
    wants = attributes(item, rng) or "a good movie"
    return rng.choice(_PHRASINGS).format(wants)


def user_text(dialogue: Dialogue) -> str:
    """x^u: every user sentence of the conversation, in order (§3.1)."""
    return " ".join(t.text.strip() for t in dialogue.turns if t.role == "user" and t.text.strip())


def embedding_prompt(text: str) -> str:
    """The paper's prompt around a user's words (their double quotes made single)."""
    return PROMPT.format(text.replace('"', "'"))


class TextEmbedder:
    """Texts -> **x** (L2-normalised float32 rows), cached on disk per encoder and text set; the
    width is the encoder's (384 for MiniLM, the LLM's hidden size for ``smollm2``)."""

    def __init__(self, encoder: str, device: str = "auto"):
        self.encoder = encoder
        self.device = device

    def _compute(self, texts: list[str]) -> np.ndarray:
        if self.encoder == "minilm":
            from backend.encoder import get_encoder

            return get_encoder(self.device).encode(texts)
        from backend.llm import LocalLLM, get_llm

        llm = get_llm()
        prompts = [embedding_prompt(t) for t in texts]
        if isinstance(llm, LocalLLM):
            return llm.embed(prompts, pooling="last")
        return llm.embed(prompts)  # an endpoint has no hidden states: its /embeddings stands in

    def __call__(self, texts: list[str], cache: bool = False) -> np.ndarray:
        """One row per text; ``cache`` keeps the whole set on disk (training and evaluation
        sets), a live request is computed each time."""
        if not cache:
            return self._compute(texts).astype(np.float32)
        unique = sorted(set(texts))
        digest = hashlib.sha1("\n".join([self.encoder, PROMPT, *unique]).encode()).hexdigest()[:16]
        path = get_settings().cache / "embeddings" / f"latentcrs-{self.encoder}-{digest}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            log.info("embedding %d texts with %s (cached at %s)", len(unique), self.encoder, path)
            vectors = np.concatenate(
                [self._compute(unique[i : i + 256]) for i in range(0, len(unique), 256)]
            ).astype(np.float32)
            _save(path, vectors)
        row = {t: i for i, t in enumerate(unique)}
        return vectors[[row[t] for t in texts]]


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
