"""Which sub-task a system turn performs: silver labels from the data (demonstrations, the
supervised warm start) and the gold labels we have (the generated `llm-redial` set's goals).

Silver rules, first match wins, for system turn i:
1. it names a movie not mentioned before -> Recommendation;
2. the user's turn before asks a fact about a movie (who stars, who directed, when, what it is
   about, how long, what rating) -> Item Detail Search;
3. it asks a question -> User Preference Elicitation;
4. a movie was already named and the turn gives a reason (because, since, it's, similar ...) ->
   Explanation;
otherwise no sub-task (greetings, thanks, goodbyes), and the turn is left out.

INSPIRED's recommender turns carry sociable strategy labels, not sub-tasks; `inspired_subtask`
maps them (a new movie not asked about = Recommendation; an inquiry or a preference check =
Elicitation; credibility about a named movie = Item Detail Search; an opinion, experience,
similarity, encouragement or transparency about a named movie = Explanation), so agreement with
it is a derived measure.
"""

from __future__ import annotations

import re

from backend.types import Dialogue

DETAIL_QUESTION = re.compile(
    r"\b(who (stars|starred|is in|was in|plays|played|directed|made)|who's in|when (was|did|is)|"
    r"what year|what('s| is) it about|what is .{1,40} about|how long|is it rated|what rating|"
    r"directed by|the director|the cast)\b",
    re.IGNORECASE,
)
REASON = re.compile(
    r"\b(because|since|it's|it is|it has|has a|similar|reminds|the best|funny|scary|great|"
    r"good|loved|love)\b",
    re.IGNORECASE,
)
# llm-redial's per-turn goals (backend/generate/goals.py) -> sub-task; other goals are left out.
GOAL_SUBTASK = {
    "ask_preference": "elicit",
    "respond_detail": "detail",
    "respond_other_review": "explain",
}


def silver_subtask(dialogue: Dialogue, i: int) -> str | None:
    """The sub-task system turn ``i`` performs by the rules above, or None."""
    turn = dialogue.turns[i]
    if turn.role != "system":
        return None
    earlier = set(dialogue.prefix(i).mentioned_items())
    if any(item not in earlier for item in turn.items):
        return "recommend"
    before = dialogue.turns[i - 1] if i > 0 else None
    if before is not None and before.role == "user" and DETAIL_QUESTION.search(before.text):
        return "detail"
    if "?" in turn.text:
        return "elicit"
    if earlier and REASON.search(turn.text):
        return "explain"
    return None


def gold_subtask(dialogue: Dialogue, i: int) -> str | None:
    """The sub-task of system turn ``i`` from the dialogue's gold goals (`llm-redial`), or None
    where the goals say none of the four (or the dialogue has no goals)."""
    goals = dialogue.meta.get("goals")
    if not goals or i >= len(goals) or dialogue.turns[i].role != "system":
        return None
    keys = goals[i] if isinstance(goals[i], list) else [goals[i]]
    if any(str(k).startswith("rec_") for k in keys):
        return "recommend"
    for key in keys:
        if key in GOAL_SUBTASK:
            return GOAL_SUBTASK[key]
    return None


INQUIRY = {
    "opinion_inquiry",
    "experience_inquiry",
    "rephrase_preference",
    "preference_confirmation",
}
EXPLAINING = {
    "personal_opinion",
    "personal_experience",
    "similarity",
    "self_modeling",
    "encouragement",
    "transparency",
}


def inspired_subtask(dialogue: Dialogue, i: int) -> str | None:
    """The sub-task INSPIRED's strategy labels of recommender turn ``i`` map to, or None."""
    turn = dialogue.turns[i]
    all_labels = dialogue.meta.get("labels") or []
    if turn.role != "system" or i >= len(all_labels):
        return None
    labels = set(all_labels[i])
    earlier = set(dialogue.prefix(i).mentioned_items())
    new = any(item not in earlier for item in turn.items)
    if new and not (labels & INQUIRY and "?" in turn.text):
        return "recommend"
    if labels & INQUIRY:
        return "elicit"
    if earlier and "credibility" in labels:
        return "detail"
    if earlier and labels & EXPLAINING:
        return "explain"
    return None
