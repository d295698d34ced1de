"""Dialogues as PECRS token sequences (§3.2): every mentioned movie is one slot for its vector."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backend.catalog import Catalog
from backend.eval.evaluate import recommender_turns
from backend.models.pecrs.config import ITEM, REC, REC_END, SEP, SPECIAL_TOKENS, PECRSConfig
from backend.types import Dialogue, Turn

# ----------------------------------------------------------------------------- inputs (§3.2)


@dataclass
class Sample:
    """One system turn to predict: the context ids, the response ids and the gold item.

    Token ids are >= 0; an item's input vector takes the place of a negative id, -(1 + index),
    where index is the item's row in the model's item table.
    """

    context: list[int]  # ends with the "System:" cue
    response: list[int]  # the turn's text with mentions as [ITEM], then end-of-sequence
    gold: int | None  # item row of the recommended movie; None for a turn without one


def slot(index: int) -> int:
    return -1 - index


def mask_mentions(text: str, items: Sequence[str], catalog: Catalog) -> str:
    """The text with each mentioned item's title replaced by [ITEM] (its first occurrence)."""
    for item_id in items:
        item = catalog[item_id]
        for name in (item.display_title, item.title):
            at = text.lower().find(name.lower())
            if at >= 0:
                text = text[:at] + ITEM + text[at + len(name) :]
                break
    return text


class Inputs:
    """Turns dialogues into PECRS token sequences for one tokenizer and item table."""

    def __init__(self, tokenizer: Any, catalog: Catalog, item_ids: Sequence[str], cfg: PECRSConfig):
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.row = {item_id: i for i, item_id in enumerate(item_ids)}
        self.cfg = cfg
        self.special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.eos = tokenizer.eos_token_id

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def known(self, turn: Turn) -> list[str]:
        return [i for i in dict.fromkeys(turn.items) if i in self.row]

    def utterance(self, turn: Turn) -> list[int]:
        """ "System:" [REC] v [REC_END] text, or "User:" [SEP] v [SEP] text (§3.2)."""
        items = self.known(turn)
        opening, closing = (REC, REC_END) if turn.role == "system" else (SEP, SEP)
        ids = self.ids("System:" if turn.role == "system" else "User:")
        for item_id in items:
            ids += [self.special[opening], slot(self.row[item_id]), self.special[closing]]
        return ids + self.ids(" " + mask_mentions(turn.text, items, self.catalog) + "\n")

    def context(self, turns: Sequence[Turn]) -> list[int]:
        """All turns, cut from the left to ``context_tokens``, then the "System:" cue."""
        ids = [i for turn in turns for i in self.utterance(turn)]
        cue = self.ids("System:")
        return ids[-(self.cfg.context_tokens - len(cue)) :] + cue

    def response(self, turn: Turn) -> list[int]:
        text = " " + mask_mentions(turn.text, self.known(turn), self.catalog)
        return self.ids(text)[: self.cfg.response_tokens - 1] + [self.eos]

    def turn_samples(self, dialogue: Dialogue, i: int) -> list[Sample]:
        """The samples of system turn ``i``: one per movie it names (``every_item``), or one for
        its first movie as in the paper (§3.1), or one without a movie."""
        turn = dialogue.turns[i]
        known = self.known(turn)
        context, response = self.context(dialogue.turns[:i]), self.response(turn)
        golds = known if self.cfg.every_item else known[:1]
        return [Sample(context, response, self.row[g]) for g in golds] or [
            Sample(context, response, None)
        ]

    def samples(self, dialogues: Sequence[Dialogue]) -> list[Sample]:
        return [s for d, i in recommender_turns(dialogues) for s in self.turn_samples(d, i)]


def epoch_order(samples: Sequence[Sample], rec_fraction: float, rng: random.Random) -> list[int]:
    """The sample indices of one epoch: every recommending sample, and as many of the others as
    make recommending samples ``rec_fraction`` of the epoch (all of them when it is 0)."""
    rec = [i for i, s in enumerate(samples) if s.gold is not None]
    other = [i for i, s in enumerate(samples) if s.gold is None]
    if rec_fraction > 0 and rec:
        keep = min(len(other), round(len(rec) * (1 - rec_fraction) / rec_fraction))
        other = rng.sample(other, keep)
    return rec + other


def item_text_hash(texts: Sequence[str], backbone: str, cfg: PECRSConfig) -> str:
    key = json.dumps([backbone, cfg.item_tokens, list(SPECIAL_TOKENS), list(texts)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]
