"""The act check (issue 15): does a user utterance carry the act it was meant to carry?

A small classifier, all-MiniLM-L6-v2 sentence embeddings and a logistic-regression head, over
five user acts. It guards the LLM-REDIAL generator (a feedback turn that does not accept or
reject is written again) and the user simulator (a line that does not do its act is rewritten).

Its training utterances come from three places, none of them a test split:
- a small hand-written seed per act (``backend/data/acts/seed.tsv``);
- ReDial's train split, labelled from its annotations: the seeker's first real message asks
  (``request``), the last one closes (``end``), and the answer to a suggested movie accepts when
  the seeker's own questionnaire says "not seen, liked" and rejects when it says "did not like";
  the recommender's messages are ``other``;
- INSPIRED's dev split (raw, with strategy labels): the answer to an ``opinion_inquiry`` states
  a preference (``request``), the seeker's last message closes (``end``).
The fitted head is cached under ``CRS_HOME/cache/acts``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.settings import get_settings
from backend.types import Dialogue

log = logging.getLogger(__name__)

ACTS: tuple[str, ...] = ("request", "accept", "reject", "end", "other")
# An act to carry: one of ACTS, or a tuple of them whose probabilities add up.
Acts = str | tuple[str, ...]
# (texts, acts) -> whether each text carries its act: ``get_act_check().carries``.
ActChecker = Callable[[Sequence[str], Sequence[Acts]], list[bool]]
SEED = Path(__file__).parent / "data" / "acts" / "seed.tsv"
# LLM-REDIAL sub-goals (backend.generate.goals) whose utterance must carry a user act.
GOAL_ACTS: dict[str, str] = {
    "ask_rec": "request",
    "accept_no_reason": "accept",
    "accept_reason": "accept",
    "accept_thanks": "accept",
    "express_interest": "accept",
    "reject_no_reason": "reject",
    "reject_thanks": "reject",
    "reason_seen": "reject",
    "reason_dislike_review": "reject",
}


# A title with its year ("Heat (1995)") reads as "this movie": what is said about a film, not
# which film, carries the act (ReDial's texts and the generator's openers are full of titles).
_SMALL = r"(?:(?:of|the|a|an|and|in|on|to|for|at|with|from)\s+)*"
_TITLE = re.compile(rf"(?:[A-Z0-9][\w'&:.-]*\s+{_SMALL}){{0,8}}[A-Z0-9][\w'&:.-]*\s*\(\d{{4}}\)")


# A sentence ends after a lower-case word or a title's year, not inside an initialism ("G.I. Jane").
SENTENCE_BREAK = re.compile(r"(?<=[a-z0-9)\]\"'])[.!?…]+[\"'”’)]*(?=\s|$)")
OPPOSITE = {"accept": "reject", "reject": "accept"}


def normalise(text: str) -> str:
    return _TITLE.sub("this movie", text)


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences (the last may lack its full stop)."""
    cuts = [0, *(m.end() for m in SENTENCE_BREAK.finditer(text))]
    parts = [text[a:b].strip() for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True)]
    return [p for p in parts if p]


def intended_act(goals: Iterable[str]) -> str | None:
    """The user act an utterance with these sub-goals must carry (None: no act to check)."""
    acts = {GOAL_ACTS[g] for g in goals if g in GOAL_ACTS}
    # A feedback step ("reject_thanks" + a reason) is about the item, whatever else it does.
    for act in ("reject", "accept", "request"):
        if act in acts:
            return act
    return None


@dataclass(frozen=True)
class Example:
    text: str
    act: str
    source: str


# ----------------------------------------------------------------------------- training data


def seed_examples(path: Path = SEED) -> list[Example]:
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [Example(text, act, "seed") for act, text in (r.split("\t", 1) for r in rows if r)]


_GREETING = re.compile(
    r"^\W*(hi|hello|hey|good (morning|evening|afternoon))\b[\w\s,!.?']{0,30}$", re.I
)


def _asks(text: str) -> bool:
    """A seeker's message that says more than hello."""
    return len(text.split()) >= 4 and not _GREETING.match(text)


def redial_examples(dialogues: Sequence[Dialogue]) -> list[Example]:
    """Acts read off ReDial's annotations (see the module docstring)."""
    out: list[Example] = []
    for d in dialogues:
        answers = d.meta.get("initiatorQuestions") or {}
        users = [i for i, t in enumerate(d.turns) if t.role == "user"]
        if len(users) < 3:
            continue
        first = next((i for i in users if _asks(d.turns[i].text)), None)
        if first is not None:
            out.append(Example(d.turns[first].text, "request", "redial"))
        out.append(Example(d.turns[users[-1]].text, "end", "redial"))
        seen: set[str] = set()
        for i, turn in enumerate(d.turns):
            if turn.role == "system":
                if 0 < i < len(d.turns) - 1 and i % 3 == 0:  # a share of them, for balance
                    out.append(Example(turn.text, "other", "redial"))
                new = [m for m in turn.items if m not in seen]
                nxt = d.turns[i + 1] if i + 1 < len(d.turns) else None
                if (
                    new
                    and nxt is not None
                    and nxt.role == "user"
                    and i + 1 not in (first, users[-1])
                ):
                    answer = answers.get(new[0]) or {}
                    if answer.get("suggested") == 1 and answer.get("seen") == 0:
                        if answer.get("liked") == 1:
                            out.append(Example(nxt.text, "accept", "redial"))
                        elif answer.get("liked") == 0:
                            out.append(Example(nxt.text, "reject", "redial"))
                    elif answer.get("suggested") == 1 and answer.get("liked") == 0:
                        out.append(Example(nxt.text, "reject", "redial"))
            seen.update(turn.items)
    return out


def inspired_examples(dialogues: Sequence[Dialogue]) -> list[Example]:
    """Acts read off INSPIRED's recommender strategy labels (raw dev split)."""
    out: list[Example] = []
    for d in dialogues:
        labels = d.meta.get("labels") or []
        users = [i for i, t in enumerate(d.turns) if t.role == "user"]
        if not users:
            continue
        out.append(Example(d.turns[users[-1]].text, "end", "inspired"))
        for i in range(len(d.turns) - 1):
            asked = i < len(labels) and "opinion_inquiry" in labels[i]
            if asked and d.turns[i + 1].role == "user" and i + 1 != users[-1]:
                out.append(Example(d.turns[i + 1].text, "request", "inspired"))
    return out


def training_examples() -> list[Example]:
    """The seed, plus ReDial train and INSPIRED dev when ``CRS_DATA_DIR`` holds them."""
    from backend.data import load_dataset

    examples = seed_examples()
    for name, split, read in (
        ("redial", "train", redial_examples),
        ("inspired-raw", "dev", inspired_examples),
    ):
        try:
            dataset = load_dataset(name)
        except FileNotFoundError as error:  # the seed alone still gives a usable check
            log.warning("act check: %s", error)
            continue
        examples += read(dataset.splits.get(split, []))
    return examples


def act_sample(dialogues: Sequence[Dialogue], n: int = 50, seed: int = 0) -> list[dict]:
    """A seeded random draw of ``n`` generated utterances that must carry an act (from their
    goals): what a person checks by hand to measure the generator's act consistency."""
    import random

    pool = [
        {"dialogue": d.id, "turn": i, "act": act, "text": turn.text}
        for d in dialogues
        for i, (turn, goals) in enumerate(zip(d.turns, d.meta.get("goals", []), strict=False))
        if (act := intended_act(goals))
    ]
    return random.Random(seed).sample(pool, min(n, len(pool)))


# ----------------------------------------------------------------------------- the classifier


@dataclass
class ActCheck:
    """MiniLM embeddings and a logistic-regression head over :data:`ACTS`."""

    coef: np.ndarray  # (acts, 384)
    intercept: np.ndarray  # (acts,)
    threshold: float = 0.4  # an utterance carries an act when its probability reaches this

    @classmethod
    def fit(
        cls, examples: Sequence[Example], seed_weight: float = 10.0, c: float = 4.0
    ) -> ActCheck:
        """Fit on ``examples``; hand-written seed examples weigh ``seed_weight`` times more; ``c``
        is the inverse regularisation strength."""
        from sklearn.linear_model import LogisticRegression

        from backend.encoder import get_encoder

        x = get_encoder().encode([normalise(e.text) for e in examples], batch_size=128)
        y = np.array([ACTS.index(e.act) for e in examples])
        weights = np.array([seed_weight if e.source == "seed" else 1.0 for e in examples])
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=0)
        head.fit(x, y, sample_weight=weights)
        coef = np.zeros((len(ACTS), x.shape[1]), dtype=np.float32)
        intercept = np.full(len(ACTS), -1e4, dtype=np.float32)  # an act with no example: never
        coef[head.classes_] = head.coef_
        intercept[head.classes_] = head.intercept_
        return cls(coef, intercept)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(texts, acts) probabilities, rows in the order of ``texts``."""
        from scipy.special import softmax

        from backend.encoder import get_encoder

        logits = get_encoder().encode([normalise(t) for t in texts]) @ self.coef.T + self.intercept
        return softmax(logits, axis=1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [ACTS[i] for i in self.probabilities(texts).argmax(1)] if texts else []

    def carries(self, texts: Sequence[str], acts: Sequence[Acts]) -> list[bool]:
        """Whether each text carries its act, judged sentence by sentence as a reader would: some
        sentence does the act (its probability, summed over a tuple of acts, reaches the
        threshold) and none does the opposite (accepting in a rejection, or the reverse)."""
        if not texts:
            return []
        pieces = [[t, *sentences(t)[:4]] for t in texts]
        p = self.probabilities([s for piece in pieces for s in piece])
        out, row = [], 0
        for piece, act in zip(pieces, acts, strict=True):
            wanted = (act,) if isinstance(act, str) else act
            block = p[row : row + len(piece)]
            row += len(piece)
            does = block[:, [ACTS.index(a) for a in wanted]].sum(1).max() >= self.threshold
            against = {OPPOSITE[a] for a in wanted if a in OPPOSITE} - set(wanted)
            contradicts = any(ACTS[i] in against for i in block[1:].argmax(1))
            out.append(bool(does and not contradicts))
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, coef=self.coef, intercept=self.intercept, threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> ActCheck:
        data = np.load(path)
        return cls(data["coef"], data["intercept"], float(data["threshold"]))


@functools.lru_cache(maxsize=1)
def get_act_check() -> ActCheck:
    """The shared act check: fitted once (about a minute on CPU), then read from the cache."""
    examples = training_examples()
    fit = {"seed_weight": 10.0, "c": 4.0}
    # Keyed by what the head sees (normalised texts) and how it is fitted, so a change to either
    # never reads a stale head.
    seen = [(normalise(e.text), e.act, e.source) for e in examples]
    key = hashlib.sha256(json.dumps([seen, fit]).encode()).hexdigest()[:16]
    path = get_settings().cache / "acts" / f"act-check-{key}.npz"
    if path.is_file():
        return ActCheck.load(path)
    log.info("act check: fitting on %d utterances", len(examples))
    check = ActCheck.fit(examples, **fit)
    check.save(path)
    return check
