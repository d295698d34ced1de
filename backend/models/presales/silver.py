"""Silver labels for the four pre-sales tasks on movie dialogues, read off the catalog and the
mentions (ReDial and LLM-REDIAL have no frame annotations; U-NEED's are hand-made).

Understanding, for one utterance (docs/datasets.md, "Pre-sales labels"):
1. the titles of the films it mentions and any "(1995)" are cut out first, so that *Scary Movie
   (2000)* yields neither a genre nor a year;
2. genre: a genre word (`explain.GENRE_WORDS`: "scary", "funny", "sci-fi", ...) gives the first
   of its genres the catalog has;
3. decade: "80s", "1950s"; year: a bare 19xx / 20xx;
4. director / actor: a 2-4 word run that is a full name the catalog credits; a name credited in
   both roles takes the role with more credits.
Polarity is not kept (U-NEED has none): "not a horror fan" is still genre: Horror.

Elicitation, for a staff turn with a question mark: its own pairs, plus the attribute alone when
a cue word asks about one ("what kind of movies", "any actor you like", "older or newer").
Recommendation: a staff turn that names a film not mentioned before; the first such film is the
gold. Generation: a staff turn with an elicitation label or a new film.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.explain import GENRE_WORDS, asked_decade
from backend.models.presales.candidates import candidate_set
from backend.models.presales.schema import TASKS, ContextTurn, Example, Pair
from backend.types import Dialogue, Turn

# A genre word or its plural ("thrillers", "westerns").
_GENRE_PATTERNS = [
    (re.compile(rf"\b{re.escape(w)}(?:s|es)?\b", re.IGNORECASE), genres)
    for w, genres in GENRE_WORDS.items()
]
_YEAR = re.compile(r"\b(?:19|20)\d\d\b(?!'?s)")
_PAREN_YEAR = re.compile(r"\(\s*(?:19|20)\d\d\s*\)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'.\-]*")
# Words with which a staff question asks about an attribute without naming a value.
CUES: dict[str, re.Pattern[str]] = {
    "genre": re.compile(
        r"\b(genres?|kinds? of (?:movies?|films?)|types? of (?:movies?|films?)|what sort)\b", re.I
    ),
    "actor": re.compile(r"\b(actors?|actress(?:es)?|starring|who plays|stars? in)\b", re.I),
    "director": re.compile(r"\b(directors?|directed)\b", re.I),
    "decade": re.compile(r"\b(older|old|newer|new|recent|classics?|era|\d0'?s)\b", re.I),
}
ROLES = {"director": "director", "star": "actor"}  # catalog role -> attribute


@dataclass
class Labeller:
    """The rules above for one catalog (its genres and credited people, read once)."""

    catalog: Catalog

    @cached_property
    def genres(self) -> dict[str, str]:
        """casefolded catalog genre -> `GENRE_WORDS` spelling, for the genres the catalog has."""
        have = {g.casefold() for item in self.catalog for g in item.genres}
        spelled = {g.casefold(): g for gs in GENRE_WORDS.values() for g in gs}
        return {g: spelled.get(g, g) for g in have}

    @cached_property
    def people(self) -> dict[str, tuple[str, str]]:
        """casefolded full name -> (attribute, catalog spelling), the role with more credits."""
        credits: Counter[tuple[str, str]] = Counter()
        spelling: dict[str, str] = {}
        for item in self.catalog:
            for role, attr in ROLES.items():
                for name in item.people.get(role, ()):
                    if len(name.split()) >= 2:
                        credits[name.casefold(), attr] += 1
                        spelling.setdefault(name.casefold(), name)
        best: dict[str, tuple[str, int]] = {}
        for (name, attr), n in credits.items():
            if n > best.get(name, ("", 0))[1]:
                best[name] = (attr, n)
        return {name: (attr, spelling[name]) for name, (attr, _) in best.items()}

    def strip_titles(self, text: str, items: Iterable[str]) -> str:
        """``text`` without the mentioned films' titles and bracketed years."""
        for item_id in items:
            item = self.catalog.get(item_id)
            if item is None:
                continue
            for title in sorted({item.display_title, item.title}, key=len, reverse=True):
                text = re.sub(re.escape(title), " ", text, flags=re.IGNORECASE)
        return _PAREN_YEAR.sub(" ", text)

    def understand(self, text: str, items: Iterable[str] = ()) -> list[Pair]:
        """The (attribute, value) pairs one utterance states, in the order of the rules."""
        text = self.strip_titles(text, items)
        pairs: dict[Pair, None] = {}
        for pattern, genres in _GENRE_PATTERNS:
            if pattern.search(text):
                have = [g for g in genres if g.casefold() in self.genres]
                if have:
                    pairs[Pair("genre", have[0])] = None
        decade = asked_decade(text)
        if decade:
            pairs[Pair("decade", f"{decade}s")] = None
        for year in _YEAR.findall(text):
            pairs[Pair("year", year)] = None
        words = [w.rstrip(".'").removesuffix("'s") for w in _WORD.findall(text)]
        i = 0
        while i < len(words):
            for n in (4, 3, 2):
                name = " ".join(words[i : i + n]).casefold()
                if len(words[i : i + n]) == n and name in self.people:
                    attr, spelled = self.people[name]
                    pairs[Pair(attr, spelled)] = None
                    i += n - 1
                    break
            i += 1
        return list(pairs)

    def elicit(self, text: str, items: Iterable[str] = ()) -> list[Pair]:
        """What a staff question asks about: its pairs, and the attributes its cue words name
        (alone); [] when the turn asks nothing."""
        if "?" not in text:
            return []
        pairs = self.understand(text, items)
        stripped = self.strip_titles(text, items)
        have = {p.attr for p in pairs}
        for attr, cue in CUES.items():
            if attr not in have and cue.search(stripped):
                pairs.append(Pair(attr))
        return pairs


def _new_items(turn: Turn, seen: set[str]) -> list[str]:
    return [i for i in dict.fromkeys(turn.items) if i not in seen]


def annotate(dialogue: Dialogue, labeller: Labeller) -> list[ContextTurn]:
    """Every turn of ``dialogue`` with its silver annotations."""
    seen: set[str] = set()
    out = []
    for turn in dialogue.turns:
        staff = turn.role == "system"
        out.append(
            ContextTurn(
                role=turn.role,
                text=turn.text,
                items=list(turn.items),
                needs=labeller.understand(turn.text, turn.items),
                asked=labeller.elicit(turn.text, turn.items) if staff else [],
                recommended=_new_items(turn, seen) if staff else [],
            )
        )
        seen.update(turn.items)
    return out


def _stable(*parts: str) -> int:
    return int(hashlib.sha1("/".join(parts).encode()).hexdigest()[:12], 16)


def dialogue_examples(
    dataset: Dataset, split: str, dialogue: Dialogue, labeller: Labeller, counts: Counter[str]
) -> list[Example]:
    """All task examples one dialogue yields (understanding: every user turn)."""
    turns = annotate(dialogue, labeller)
    found = []
    for i, turn in enumerate(turns):
        mentioned = list(dict.fromkeys(x for t in turns[:i] for x in t.items))
        base = {
            "dataset": dataset.name,
            "split": split,
            "dialogue_id": dialogue.id,
            "user_id": dialogue.user_id or dialogue.id,
            "turn": i,
            "context": turns[:i],
            "mentioned": mentioned,
        }
        if turn.role == "user":
            found.append(Example(task="understand", current=turn.text, label=turn.needs, **base))
            continue
        if i == 0:
            continue  # a greeting before the user spoke: nothing to elicit or recommend from
        if turn.asked:
            found.append(Example(task="elicit", label=turn.asked, **base))
        if turn.recommended:
            gold = turn.recommended[0]
            seed = _stable(dataset.name, dialogue.id, str(i))
            exclude = set(mentioned) | set(turn.recommended)
            cands = candidate_set(gold, dataset.catalog, counts, exclude, random.Random(seed))
            found.append(Example(task="recommend", candidates=cands, gold=gold, **base))
        if turn.asked or turn.recommended:
            found.append(
                Example(
                    task="generate",
                    label=turn.asked,
                    items=turn.recommended,
                    reference=turn.text,
                    **base,
                )
            )
    return found


def build_examples(
    dataset: Dataset,
    split: str,
    per_task: int,
    seed: int = 0,
    empty_share: float = 0.2,
) -> dict[str, list[Example]]:
    """Up to ``per_task`` examples per task from ``split``, drawn with ``seed``.

    Understanding keeps utterances with a pair and, as ``empty_share`` of the draw, utterances
    with none (80 % of user turns state no attribute; all-empty gold would reward silence).
    """
    from backend.models.popularity import item_counts

    labeller = Labeller(dataset.catalog)
    counts = item_counts(dataset)
    pools: dict[str, list[Example]] = {task: [] for task in TASKS}
    for dialogue in dataset.splits.get(split, []):
        for example in dialogue_examples(dataset, split, dialogue, labeller, counts):
            pools[example.task].append(example)
    rng = random.Random(seed)
    drawn = {}
    for task, pool in pools.items():
        if task == "understand":
            full = [e for e in pool if e.label]
            empty = [e for e in pool if not e.label]
            n_empty = min(
                len(empty), round(min(per_task, len(full) / (1 - empty_share)) * empty_share)
            )
            picked = rng.sample(full, min(per_task - n_empty, len(full))) + rng.sample(
                empty, n_empty
            )
        else:
            picked = rng.sample(pool, min(per_task, len(pool)))
        drawn[task] = sorted(picked, key=lambda e: (e.dialogue_id, e.turn))
    return drawn
