"""Reading the LLM's decision among allowed options, robustly.

A local model is scored: each option's log-likelihood after the prompt, minus its likelihood
after the same prompt with a content-free context ("N/A": contextual calibration, so an option
that is likely anyway gains nothing); the best is taken, so the answer is always an option. An endpoint writes
an answer, read as JSON ({"name": ...}) or as text and matched to the options (rapidfuzz); an
answer that names no option falls back to the default and is marked invalid, to be counted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process

from backend.llm import LLM, GenerationConfig

_JSON = re.compile(r"\{[^{}]*\}")
MATCH_CUTOFF = 85.0  # rapidfuzz WRatio (0-100) a written answer needs to count as an option


@dataclass
class Choice:
    """The decision (an option's key), each option's score, the raw answer, and whether the
    answer named an option (False: the default was taken)."""

    decision: str
    scores: dict[str, float] = field(default_factory=dict)
    raw: str = ""
    valid: bool = True
    tokens: int = 0  # LLM tokens read and written for it


def parse_answer(raw: str, options: Mapping[str, str]) -> str | None:
    """The key of the option ``raw`` names (JSON or text), or None."""
    candidates = []
    for blob in _JSON.findall(raw):
        try:
            value = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            candidates += [str(v) for v in value.values() if isinstance(v, str | int)]
    candidates.append(raw.strip().strip('"').strip())
    by_label = {label.casefold(): key for key, label in options.items()}
    by_label.update({key.casefold(): key for key in options})
    for text in candidates:
        if text.casefold() in by_label:
            return by_label[text.casefold()]
    for text in candidates:
        match = process.extractOne(text, list(options.values()), scorer=fuzz.WRatio)
        if match and match[1] >= MATCH_CUTOFF:
            return next(k for k, label in options.items() if label == match[0])
    return None


class Chooser:
    """Asks one LLM to choose; caches the options' scores under a content-free prompt."""

    def __init__(self, llm: LLM, mode: str, mean: bool = True):
        self.llm = llm
        self.mode = mode
        self.mean = mean  # per-token scores
        self._prior: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._lock = threading.Lock()

    def prior(self, null_prompt: str, continuations: list[str]) -> list[float]:
        key = (null_prompt, tuple(continuations))
        with self._lock:
            if key not in self._prior:
                self._prior[key] = self.llm.score_options(null_prompt, continuations, self.mean)
            return self._prior[key]

    def choose(
        self,
        prompt: str,
        lead: str,
        options: Mapping[str, str],
        default: str,
        null_prompt: str = "",
    ) -> Choice:
        """Choose among ``options`` (key -> label) after ``prompt``, which ends with ``lead``.

        Scored, each option's log-likelihood has its likelihood after ``null_prompt`` (the same
        prompt with a content-free context, when given) taken off: contextual calibration.
        """
        if self.mode == "score":
            continuations = [f" {label}" for label in options.values()]
            raw = self.llm.score_options(prompt, continuations, self.mean)
            tokens = self.llm.last_usage.prompt_tokens
            prior = self.prior(null_prompt, continuations) if null_prompt else [0.0] * len(raw)
            scores = {k: r - p for k, r, p in zip(options, raw, prior, strict=True)}
            best = max(scores, key=lambda k: scores[k])
            rounded = {k: round(v, 3) for k, v in scores.items()}
            return Choice(best, rounded, options[best], tokens=tokens)
        question = prompt.removesuffix(lead).rstrip()
        labels = ", ".join(json.dumps(label) for label in options.values())
        raw_answer = self.llm.chat(
            [
                {
                    "role": "user",
                    "content": f'{question}\nAnswer with JSON only: {{"name": one of {labels}}}',
                }
            ],
            GenerationConfig(max_new_tokens=40, temperature=0.0),
        )
        usage = self.llm.last_usage
        tokens = usage.prompt_tokens + usage.completion_tokens
        key = parse_answer(raw_answer, options)
        if key is None:
            return Choice(default, raw=raw_answer, valid=False, tokens=tokens)
        return Choice(key, raw=raw_answer, tokens=tokens)
