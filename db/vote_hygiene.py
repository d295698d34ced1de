"""Vote hygiene for the arena, after Chatbot Arena: a daily cap, identity leaks, anomalous voters.

* **Daily cap** (``cap_reached``): a voter (a per-browser session id) may cast at most ``cap``
  votes in any 24 hours.
* **Identity leak** (``leaked_names``): a blind vote where a reply names its own model ("As
  popularity, I suggest…") is stored with the flag ``identity_leak`` and left out of the fit.
* **Anomalous voters** (``check_voters``): each voter's decisive votes (A or B) are tested in the
  order cast against the leaderboard fitted *without that voter*. With ``p`` the predicted chance
  of the outcome the voter chose (clipped to [0.05, 0.95]), the likelihood ratio of "votes at
  random" (each side 1/2) against "votes like everyone else" (``p``) is ``prod 0.5 / p``. The
  voter is flagged as soon as it reaches ``1 / alpha``. If the fitted probabilities were right,
  this ratio would be a supermartingale for an ordinary voter, so by Ville's inequality an
  ordinary voter is flagged with probability at most ``alpha`` however long it votes (a
  sequential probability ratio test with no stop for acceptance). Random voters drift up slowly,
  adversarial ones (picking the predicted loser) fast; ties and "both bad" carry no evidence.
  Flagged voters' votes are all left out of the fit and counted in the summary.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from db.arena import votes_since, votes_to_battles
from db.ranking import fit_bradley_terry
from db.schema import ArenaVote

IDENTITY_LEAK = "identity_leak"
CAP_WINDOW = timedelta(hours=24)
VOTER_ALPHA = 0.01
# Predicted probabilities are clipped toward 1/2: one surprising vote must not condemn a voter
# on a fit from few votes (the test stays valid, see the module docstring).
_CLIP = 0.05
_MIN_NAME_CHARS = 3  # shorter names ("a", "v1") would match ordinary words


def cap_reached(engine: Engine | None, session_id: str, cap: int, now: datetime) -> bool:
    """Whether voter ``session_id`` already cast ``cap`` votes in the 24 hours before ``now``."""
    return votes_since(engine, session_id, now - CAP_WINDOW) >= cap


def _name_pattern(name: str) -> re.Pattern[str] | None:
    parts = [p for p in re.split(r"[-_\s]+", name.strip()) if p]
    if len("".join(parts)) < _MIN_NAME_CHARS:
        return None
    # "llm_rec", "llm-rec" and "LLM rec" are the same name to a reader.
    body = r"[-_\s]+".join(re.escape(p) for p in parts)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def leaked_names(text: str, names: Iterable[str]) -> list[str]:
    """The ``names`` (served or registry names of the reply's own model) that ``text`` says.

    A case-insensitive whole-word match; "-", "_" and spaces inside a name match each other.
    """
    found = []
    for name in dict.fromkeys(n for n in names if n):
        pattern = _name_pattern(name)
        if pattern is not None and pattern.search(text):
            found.append(name)
    return found


@dataclass
class VoterResult:
    """One voter's test: decisive votes seen, the final log likelihood ratio, and the verdict."""

    votes: int = 0
    log_ratio: float = 0.0
    flagged: bool = False


def _win_probability(ratings: dict[str, float], model_a: str, model_b: str) -> float:
    # The fit is on the Elo-like scale: 400 points = a factor 10 in odds.
    if model_a not in ratings or model_b not in ratings:
        return 0.5
    return 1.0 / (1.0 + 10 ** ((ratings[model_b] - ratings[model_a]) / 400.0))


def check_voters(
    votes: Sequence[ArenaVote], *, alpha: float = VOTER_ALPHA, l2: float = 0.1
) -> dict[str, VoterResult]:
    """The sequential test of the module docstring for every voter with a decisive vote.

    ``votes`` are in the order cast; votes without a ``session_id`` are not tested (and still
    inform other voters' fits). ``l2`` is the prior of the leave-voter-out Bradley–Terry fits.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` is {alpha}; give the false-flag rate as a fraction, e.g. 0.01")
    battles = votes_to_battles(votes)
    by_voter: dict[str, list[int]] = defaultdict(list)
    for index, vote in enumerate(votes):
        if vote.session_id and vote.vote in ("A", "B"):
            by_voter[vote.session_id].append(index)
    threshold = math.log(1.0 / alpha)
    results: dict[str, VoterResult] = {}
    for voter, indices in by_voter.items():
        others = [b for b, v in zip(battles, votes, strict=True) if v.session_id != voter]
        ratings = fit_bradley_terry(others, l2=l2) if others else {}
        result = results[voter] = VoterResult()
        for index in indices:
            model_a, model_b, outcome = battles[index]
            p_a = min(max(_win_probability(ratings, model_a, model_b), _CLIP), 1.0 - _CLIP)
            chosen = p_a if outcome == "A" else 1.0 - p_a
            result.votes += 1
            result.log_ratio += math.log(0.5 / chosen)
            if result.log_ratio >= threshold:
                result.flagged = True
                break
    return results


@dataclass
class CleanVotes:
    """The votes the leaderboard fits, and what was left out and why."""

    kept: list[ArenaVote]
    leaks: int = 0
    flagged_voters: list[str] = field(default_factory=list)
    flagged_votes: int = 0


def clean_votes(votes: Sequence[ArenaVote], *, alpha: float = VOTER_ALPHA) -> CleanVotes:
    """Drop identity-leak votes, then every vote of a voter ``check_voters`` flags."""
    unleaked = [v for v in votes if IDENTITY_LEAK not in (v.flags or [])]
    verdicts = check_voters(unleaked, alpha=alpha)
    flagged = sorted(voter for voter, result in verdicts.items() if result.flagged)
    dropped = set(flagged)
    kept = [v for v in unleaked if v.session_id not in dropped]
    return CleanVotes(
        kept=kept,
        leaks=len(votes) - len(unleaked),
        flagged_voters=flagged,
        flagged_votes=len(unleaked) - len(kept),
    )
