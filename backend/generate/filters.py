"""Dialogue filtering (§2.5.2): why a generated dialogue is dropped, every reason counted.

The paper's four rules, in its order, plus one this project needs: the items a template binds
must be named in the utterances about them, or the dialogue's item labels would be wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rapidfuzz import fuzz

from backend.catalog import split_year
from backend.generate.goals import SLOT_RE
from backend.generate.templates import FilledStep

REASONS: tuple[str, ...] = (
    "incomplete",
    "garbled",
    "unfilled_slot",
    "length_mismatch",
    "item_missing",
)

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_PLACEHOLDER = re.compile(r"\{(item|review|title)\}|USER_HIS_|USER_MIGHT_|OTHER_[A-Z]+_?REVIEW")
# Goals whose utterance must name its item (greetings, recommendations).
NAMING_GOALS = {
    "greet_likes",
    "greet_dislikes",
    "rec_might_likes",
    "rec_his_likes",
    "rec_his_dislikes",
}


def is_garbled(text: str) -> bool:
    """Unreadable characters: U+FFFD, control or unassigned code points, or mostly non-Latin text."""
    letters = 0
    foreign = 0
    for ch in text:
        category = unicodedata.category(ch)
        if ch == "\ufffd" or (category[0] == "C" and ch not in "\n\t"):
            return True
        if category[0] == "L":
            letters += 1
            foreign += ord(ch) > 0x24F  # beyond Latin Extended-B
    return letters > 0 and foreign / letters > 0.1


def names_item(text: str, title: str) -> bool:
    """Whether ``text`` names ``title`` (with or without its year; small spelling slips allowed)."""
    name = split_year(title)[0].lower()
    text = text.lower()
    if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text):
        return True
    # Fuzzy only for long names: a short one ("Ran") would match inside ordinary words.
    return len(name) >= 8 and fuzz.partial_ratio(name, text) >= 90


def check(
    utterances: Sequence[str], steps: Sequence[FilledStep], titles: dict[str, str]
) -> list[str]:
    """Every reason (from :data:`REASONS`) the dialogue fails; an empty list keeps it."""
    reasons = []
    if (
        not utterances
        or any(not u.strip() for u in utterances)
        or not _SENTENCE_END.search(utterances[-1].strip())
    ):
        reasons.append("incomplete")
    if any(is_garbled(u) for u in utterances):
        reasons.append("garbled")
    if any(SLOT_RE.search(u) or _PLACEHOLDER.search(u) for u in utterances):
        reasons.append("unfilled_slot")
    if len(utterances) != len(steps):
        reasons.append("length_mismatch")
    elif any(
        step.item_id and NAMING_GOALS & set(step.goals) and not names_item(u, titles[step.item_id])
        for u, step in zip(utterances, steps, strict=True)
    ):
        reasons.append("item_missing")
    return reasons
