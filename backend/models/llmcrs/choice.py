"""Reading the LLM's decision among allowed options, robustly.

A local model is scored: each option's log-likelihood after the prompt, minus its likelihood
after a prompt with no context (pointwise mutual information, so an option that is likely
anyway gains nothing); the best is taken, so the answer is always an option. An endpoint writes
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
    """Asks one LLM to choose; caches each option's likelihood without context."""

    def __init__(self, llm: LLM, mode: str):
        self.llm = llm
        self.mode = mode
        self._prior: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def prior(self, lead: str, label: str) -> float:
        with self._lock:
            if (lead, label) not in self._prior:
                self._prior[lead, label] = self.llm.score(f"Context: none.\n{lead}", f" {label}")
            return self._prior[lead, label]

    def choose(self, prompt: str, lead: str, options: Mapping[str, str], default: str) -> Choice:
        """Choose among ``options`` (key -> label) after ``prompt``, which ends with ``lead``."""
        if self.mode == "score":
            scores = {
                key: self.llm.score(prompt, f" {label}") - self.prior(lead, label)
                for key, label in options.items()
            }
            best = max(scores, key=lambda k: scores[k])
            return Choice(best, {k: round(v, 3) for k, v in scores.items()}, options[best])
        question = prompt.removesuffix(lead).rstrip()
        labels = ", ".join(json.dumps(label) for label in options.values())
        raw = self.llm.chat(
            [
                {
                    "role": "user",
                    "content": f'{question}\nAnswer with JSON only: {{"name": one of {labels}}}',
                }
            ],
            GenerationConfig(max_new_tokens=40, temperature=0.0),
        )
        key = parse_answer(raw, options)
        if key is None:
            return Choice(default, raw=raw, valid=False)
        return Choice(key, raw=raw)
