"""The hard filter (§4.3): strict constraints from the user's words narrow the catalog, and the
soft intent ranks what is left.

The paper's LLM writes the hard rules (Extract-Rules) as JSON. A 135M model cannot be trusted to
do that alone, so its answer is checked: a genre or decade it gives is kept only when the user's
own words support it (a word for that genre, a decade phrase), and a genre word or decade the
user said that it missed is added by rule; both are counted and shown in the trace. Before any
reading, the titles of films named in the conversation are taken out ("Star Wars" asks for no
war film) and so are negated genre words ("nothing scary"). People are matched by name only
where the catalog lists cast and crew (bare MovieLens has none; the trace says so).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.catalog import Catalog
from backend.explain import asked_decade, genre_mentions
from backend.llm import LLM, GenerationConfig
from backend.types import Dialogue, Item

_NEGATION = re.compile(
    r"\b(?:not|no|nothing|never|without|don'?t|hate|dislike|avoid)\b[\w\s,']{0,20}$", re.I
)
_JSON = re.compile(r"\{.*?\}", re.S)


@dataclass
class Constraints:
    """The strict requirements read from the conversation."""

    genres: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (word, any of)
    decade: int | None = None
    people: list[str] = field(default_factory=list)
    from_llm: list[str] = field(default_factory=list)  # values the LLM gave and the words support
    added_by_rule: list[str] = field(default_factory=list)  # said by the user, missed by the LLM
    dropped: list[str] = field(default_factory=list)  # the LLM's values the words do not support
    llm_answer: str = ""
    readable: bool = True  # whether the LLM's answer parsed as JSON

    @property
    def empty(self) -> bool:
        return not (self.genres or self.decade or self.people)

    def describe(self) -> list[str]:
        said = [f"genre: {word}" for word, _ in self.genres]
        said += [f"decade: {self.decade}s"] if self.decade else []
        return said + [f"person: {p}" for p in self.people]


def user_words(dialogue: Dialogue, catalog: Catalog) -> str:
    """The user's lines with the titles of every film named in the conversation taken out."""
    text = " ".join(t.text for t in dialogue.turns if t.role == "user")
    for item_id in dialogue.mentioned_items():
        if item_id in catalog:
            title = re.sub(r"\s*\(\d{4}\)\s*$", "", catalog[item_id].display_title)
            text = re.sub(re.escape(title), " ", text, flags=re.I) if title else text
    return text


def affirmed_genres(text: str, catalog_genres: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(word, (the catalog genre it first means,)) for each genre word said without a negation."""
    found = []
    for word, genres in genre_mentions(text):
        position = re.search(rf"\b{re.escape(word)}\b", text, re.I)
        if position and _NEGATION.search(text[: position.start()]):
            continue
        # A hard constraint takes the word's first meaning only: "scary" is Horror, not Thriller.
        kept = next((g for g in genres if g in catalog_genres), None)
        if kept:
            found.append((word, (kept,)))
    return found


def people_named(text: str, people: Sequence[str]) -> list[str]:
    lowered = f" {text.lower()} "
    return [p for p in people if f" {p.lower()} " in lowered]


def extraction_prompt(text: str, genres: Sequence[str]) -> list[dict[str, str]]:
    """Extract-Rules as one JSON answer, with two worked examples: without them the 135M model
    copies the answer format's example back."""
    return [
        {"role": "system", "content": "You read movie requests and answer only with JSON."},
        {
            "role": "user",
            "content": f'Genres: {", ".join(genres)}.\nRequest: "a funny movie from the 70s"',
        },
        {"role": "assistant", "content": '{"genres": ["Comedy"], "decade": "1970s"}'},
        {"role": "user", "content": 'Request: "a sci-fi adventure"'},
        {"role": "assistant", "content": '{"genres": ["Sci-Fi", "Adventure"], "decade": null}'},
        {"role": "user", "content": f'Request: "{text.strip()}"'},
    ]


def parse_answer(answer: str) -> dict | None:
    match = _JSON.search(answer)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def check_answer(
    answer: str, text: str, catalog_genres: set[str], people: Sequence[str]
) -> Constraints:
    """The constraints the LLM's ``answer`` gives that ``text`` supports, plus what the text says
    that the answer missed (by rule)."""
    said_genres = affirmed_genres(text, catalog_genres)
    said_decade = asked_decade(text)
    out = Constraints(llm_answer=answer, people=people_named(text, people))
    parsed = parse_answer(answer)
    out.readable = parsed is not None
    parsed = parsed or {}
    raw_genres = parsed.get("genres") or []
    for value in raw_genres if isinstance(raw_genres, list) else [raw_genres]:
        value = str(value).strip()
        match = next((w for w in said_genres if value.lower() == w[0] or value in w[1]), None)
        if match and match not in out.genres:
            out.genres.append(match)
            out.from_llm.append(f"genre: {match[0]}")
        elif not match:
            out.dropped.append(f"genre: {value}")
    decade = asked_decade(str(parsed.get("decade") or ""))
    if decade is not None and decade == said_decade:
        out.decade = decade
        out.from_llm.append(f"decade: {decade}s")
    elif decade is not None:
        out.dropped.append(f"decade: {parsed.get('decade')}")
    for word_genres in said_genres:
        if word_genres not in out.genres and not any(
            set(word_genres[1]) & set(g) for _, g in out.genres
        ):
            out.genres.append(word_genres)
            out.added_by_rule.append(f"genre: {word_genres[0]}")
    if out.decade is None and said_decade is not None:
        out.decade = said_decade
        out.added_by_rule.append(f"decade: {said_decade}s")
    return out


@dataclass(frozen=True)
class Vocabulary:
    """What a constraint may name in a catalog: its genres and the people it credits."""

    genres: tuple[str, ...]
    people: tuple[str, ...]

    @classmethod
    def of(cls, catalog: Catalog) -> Vocabulary:
        return cls(
            tuple(sorted({g for item in catalog for g in item.genres})),
            tuple(sorted({p for item in catalog for names in item.people.values() for p in names})),
        )


def extract(
    dialogues: Sequence[Dialogue],
    catalog: Catalog,
    llm: LLM | None,
    vocabulary: Vocabulary | None = None,
) -> list[Constraints]:
    """Each conversation's constraints: by the LLM and checked, or by rule alone (``llm`` None);
    ``vocabulary`` is the catalog's (read from it when not given)."""
    vocabulary = vocabulary or Vocabulary.of(catalog)
    genres, people = set(vocabulary.genres), vocabulary.people
    texts = [user_words(d, catalog) for d in dialogues]
    if llm is None:
        return [check_answer("", t, genres, people) for t in texts]
    answers = llm.chat_batch(
        [extraction_prompt(t, vocabulary.genres) for t in texts],
        GenerationConfig(max_new_tokens=40),
    )
    return [check_answer(a, t, genres, people) for a, t in zip(answers, texts, strict=True)]


def relaxation_order(constraints: Constraints) -> list[tuple[str, object]]:
    """The requirements, the first kept longest: genres, then the decade, then people."""
    checks: list[tuple[str, object]] = [
        (f"genre: {word}", lambda item, g=genres: bool(set(item.genres) & set(g)))
        for word, genres in constraints.genres
    ]
    if constraints.decade:
        decade = constraints.decade
        checks.append(
            (f"decade: {decade}s", lambda item: bool(item.year) and item.year // 10 * 10 == decade)
        )
    for person in constraints.people:
        checks.append(
            (f"person: {person}", lambda item, p=person: any(p in n for n in item.people.values()))
        )
    return checks


def hard_filter(
    candidates: Sequence[Item], constraints: Constraints, min_kept: int
) -> tuple[set[str], list[str]]:
    """The ids of ``candidates`` that meet the constraints, and the requirements relaxed (last
    first) because fewer than ``min_kept`` films met them all."""
    order = relaxation_order(constraints)
    for keep in range(len(order), -1, -1):
        checks = [check for _, check in order[:keep]]
        kept = {i.id for i in candidates if all(check(i) for check in checks)}
        if len(kept) >= min_kept or keep == 0:
            return kept, [name for name, _ in order[keep:]]
    return set(), []
