"""Zero-shot LLM recommender, grounded in the catalog.

``grounding="retrieved"`` (the default): a small LLM cannot be trusted to name real films, so it
chooses instead of inventing. MiniLM retrieves candidates for the dialogue, boosted by the genres
and decade the user asked for; the LLM scores each candidate title's likelihood as the answer
(pointwise mutual information against a neutral prompt, so short famous titles gain nothing);
the fused ranking's first item is recommended in words the LLM writes, which are checked (no
years, names or titles that the item's facts do not hold, no copying of the user) before they
are shown; two alternatives follow.

``grounding="free"``: the paper-faithful free-naming baseline. The LLM answers the dialogue and
names movies in its reply; names are mapped to catalog ids with rapidfuzz (``Catalog.search``),
the fuzzy matching LLM-REDIAL §4.2 applies (after He et al., 2023). ``llm-rec`` holds the same
baselines with LLM-REDIAL's prompts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from backend.catalog import Catalog
from backend.explain import asked_decade, asked_genres, genre_mentions, with_reasons
from backend.llm import GenerationConfig, get_llm
from backend.mentions import candidate_titles, match_titles
from backend.models.popularity import item_counts
from backend.models.retrieval import Retrieval, RetrievalConfig
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, ModelConfig, fresh_items, register, timed
from backend.types import Dialogue, Item, Reply, ScoredItem, TraceStep, UserHistory

SYSTEM_PROMPT = (
    "You are a friendly movie recommender chatting with a user. Reply in two or three short "
    "sentences and recommend specific movies, writing each title with its year, like "
    "Inception (2010)."
)


GROUNDINGS = ("retrieved", "free")
# The LLM's choice: how likely each title is as the answer, against how likely it is anyway.
CHOICE_PROMPT = (
    'A user asked a movie recommender: "{request}"\nThe recommender suggested the movie:'
)
NEUTRAL_PROMPT = "A movie recommender suggested the movie:"
WRITE_PROMPT = "You are a movie recommender. The movie to recommend: {facts}"
# Words that say nothing about which film: a request made only of these gets a question back.
GENERIC_WORDS = frozenset(
    re.findall(
        r"\S+",
        "hi hello hey there good evening morning afternoon thanks thank you please a an the i i'm "
        "im me my we us to for of in on at and or some something anything any movie movies film "
        "films watch watching see want wanna would like love recommend recommendation suggest "
        "suggestion give can could your what should tonight today now great nice cool fun ok "
        "okay yes no is it its it's be do have need looking mood new",
    )
)
_SENTENCE_END = re.compile(r"[.!?\n]")
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+")


@dataclass
class LLMZeroShotConfig(ModelConfig):
    llm: str = ""  # empty = CRS_LLM (default: the bundled SmolLM2-135M-Instruct)
    base_url: str = ""  # an OpenAI-compatible endpoint; empty = CRS_LLM_BASE_URL or local
    max_new_tokens: int = 96
    temperature: float = 0.0  # LLM-REDIAL decodes its LLM baselines at temperature 0
    context_turns: int = 8  # keeps the prompt short enough for a 135M model on CPU
    match_cutoff: float = 85.0  # fuzzy title score (Catalog.search, 0-100) a name needs to count
    grounding: str = "retrieved"  # retrieved: choose among catalog candidates | free: name titles
    candidates: int = 20  # retrieved candidates, re-ranked by the asked genres and decade
    scored: int = 8  # of them, how many the LLM scores (one forward pass each)
    constraint_weight: float = 0.15  # cosine bonus for the share of the asked genres an item has
    decade_weight: float = 1.0  # bonus for the asked decade: above any cosine, so a filter
    llm_weight: float = 0.5  # weight of the LLM's (z-scored) choice against retrieval's
    clause_tokens: int = 24  # the LLM's sentence about the chosen item
    device: str = "auto"  # for the retrieval encoder

    def __post_init__(self) -> None:
        if self.grounding not in GROUNDINGS:
            raise ValueError(
                f"llm-zero-shot: grounding must be one of {', '.join(GROUNDINGS)}, "
                f"got {self.grounding!r}"
            )


def history_note(history: UserHistory | None, catalog: Catalog, n: int = 10) -> str:
    """One sentence listing the user's latest liked and disliked items."""
    if history is None:
        return ""
    liked = [catalog[i.item_id].display_title for i in history.liked[-n:] if i.item_id in catalog]
    disliked = [
        catalog[i.item_id].display_title for i in history.disliked[-n:] if i.item_id in catalog
    ]
    parts = []
    if liked:
        parts.append("The user liked: " + "; ".join(liked) + ".")
    if disliked:
        parts.append("The user disliked: " + "; ".join(disliked) + ".")
    return " ".join(parts)


def checked_clause(raw: str, item: Item, dialogue: Dialogue) -> tuple[str, str]:
    """The first sentence of ``raw`` if it only says what may be said of ``item``, else ("", why).

    Refused: no sentence; any digit (years, counts); a capitalised name the item's facts do not
    hold; a repeated phrase (a small model's loop); five words in a row copied from the user.
    """
    sentence = _SENTENCE_END.split(raw.strip(), maxsplit=1)[0].strip()
    words = sentence.split()
    if len(words) < 3:
        return "", "too short"
    if any(ch.isdigit() for ch in sentence):
        return "", "states a number"
    facts = " ".join([item.title, *item.genres, *sum(item.people.values(), ()), item.description])
    for name in _CAPITALISED.findall(sentence):
        if name not in facts and name not in {"I", "It", "If", "You"}:
            return "", f"names {name!r}, which the item's facts do not hold"
    for word, genres in genre_mentions(sentence):
        if not set(genres) & set(item.genres):
            return "", f"calls it {word}, which its genres do not say"
    lowered = [w.lower().strip(",;:") for w in words]
    trigrams = [tuple(lowered[i : i + 3]) for i in range(len(lowered) - 2)]
    if len(trigrams) != len(set(trigrams)):
        return "", "repeats itself"
    user = " ".join(t.text.lower() for t in dialogue.turns if t.role == "user")
    if any(" ".join(lowered[i : i + 5]) in user for i in range(len(lowered) - 4)):
        return "", "copies the user"
    return sentence, ""


def genre_phrase(item: Item) -> str:
    """ "a horror/thriller film" from the item's first two genres (or "a film")."""
    genres = "/".join(g.lower() for g in item.genres[:2])
    article = "an" if genres[:1] in tuple("aeiou") else "a"
    return f"{article} {genres} film" if genres else "a film"


@register
class LLMZeroShot(CRSModel):
    name = "llm-zero-shot"
    description = (
        "A general chat LLM, zero-shot and grounded in the catalog: it chooses among retrieved "
        "movies by scoring them and writes about its choice, checked against the item's facts "
        "(setting grounding=free: it names movies freely, matched to the catalog)."
    )
    config_class = LLMZeroShotConfig
    max_concurrency = 8  # concurrent requests share the local LLM's batch (backend/batching.py)

    def __init__(self, dataset, config: LLMZeroShotConfig | None = None):
        super().__init__(dataset, config)
        self.llm = get_llm(self.config.llm or None, base_url=self.config.base_url or None)
        self.version = f"{self.llm.name} ({self.config.grounding})"
        self.retriever: Retrieval | None = None
        if self.config.grounding == "retrieved":
            self.retriever = Retrieval(
                dataset,
                RetrievalConfig(top_k=max(self.config.candidates, 1), device=self.config.device),
            )
        self._prior: dict[str, float] = {}  # title log-probability under the neutral prompt
        counts = item_counts(dataset)
        self.popularity = {i: float(counts.get(i, 0)) for i in self.catalog.ids}
        # Read once: every request filters the whole catalog by year and genre.
        self.years = np.array([item.year or 0 for item in self.catalog])
        self.genres = [set(item.genres) for item in self.catalog]

    # ------------------------------------------------------------------ grounded: choose, write

    def candidates(self, dialogue: Dialogue) -> tuple[list[ScoredItem], TraceStep]:
        """The whole catalog scored by the dialogue's cosine, plus the share of the asked genres
        an item has, plus ``decade_weight`` when it is from the decade the user last asked for
        (so large that it acts as a filter while any such film is left)."""
        assert self.retriever is not None
        user_turns = [t.text for t in dialogue.turns if t.role == "user"]
        genres = asked_genres(" ".join(user_turns))
        decade = next((d for t in reversed(user_turns) if (d := asked_decade(t))), None)
        scores = self.retriever.scores(self.retriever.query_vectors([dialogue]), 0.0)[0]
        if genres:
            share = np.array([len(have.intersection(genres)) for have in self.genres])
            scores = scores + self.config.constraint_weight * share / len(genres)
        if decade:
            in_decade = (self.years >= decade) & (self.years < decade + 10)
            scores = scores + self.config.decade_weight * in_decade
        seen = set(dialogue.mentioned_items())
        ranked = []
        for j in np.argsort(-scores):
            item = self.catalog[self.catalog.ids[j]]
            # A placeholder row (MovieLens lists a film called "unknown") is no recommendation.
            if item.id in seen or not (item.year or item.genres):
                continue
            ranked.append(
                ScoredItem(item_id=item.id, score=float(scores[j]), title=item.display_title)
            )
            if len(ranked) >= self.config.candidates:
                break
        ranked = fresh_items(ranked, seen, self.config.candidates)
        step = TraceStep(
            name="retrieve",
            input={"genres asked": genres, "decade asked": decade},
            output=[(s.title, round(s.score, 3)) for s in ranked[: self.config.scored]],
        )
        return ranked, step

    def title_logprob(self, prompt: str, title: str) -> tuple[float, int, int]:
        """The title's log-probability after ``prompt``, its tokens, and the tokens read."""
        tokens = self.llm.token_logprobs(prompt, " " + title)
        read = self.llm.last_usage.prompt_tokens
        return float(sum(t.logprob for t in tokens)), max(len(tokens), 1), read

    def choose(
        self, dialogue: Dialogue, candidates: list[ScoredItem]
    ) -> tuple[list[ScoredItem], TraceStep, int]:
        """The LLM scores the first candidates; its z-scored choice is fused with retrieval's.
        Also returns the tokens the LLM read to score them."""
        start = time.perf_counter()
        head = candidates[: self.config.scored]
        request = dialogue.turns[-1].text[-400:].replace('"', "'")
        prompt = CHOICE_PROMPT.format(request=request)
        pmi = []
        read = 0
        for s in head:
            logprob, n, tokens = self.title_logprob(prompt, s.title)
            read += tokens
            if s.item_id not in self._prior:
                prior, _, tokens = self.title_logprob(NEUTRAL_PROMPT, s.title)
                self._prior[s.item_id] = prior
                read += tokens
            pmi.append((logprob - self._prior[s.item_id]) / n)

        def z(values: list[float]) -> np.ndarray:
            array = np.asarray(values, dtype=np.float64)
            return (array - array.mean()) / (array.std() or 1.0)

        fused = z([s.score for s in head]) + self.config.llm_weight * z(pmi)
        order = np.argsort(-fused, kind="stable")
        chosen = [head[i].model_copy(update={"score": float(fused[i])}) for i in order]
        # Past the scored head, retrieval's order stands, below every scored item.
        low = float(fused.min()) - 1.0 if len(head) else 0.0
        chosen += [
            s.model_copy(update={"score": low - i}) for i, s in enumerate(candidates[len(head) :])
        ]
        step = TraceStep(
            name="LLM choice",
            input=prompt,
            output=[(head[i].title, round(pmi[i], 3), round(float(fused[i]), 3)) for i in order],
            seconds=time.perf_counter() - start,
        )
        return chosen, step, read

    def write(self, dialogue: Dialogue, item: Item) -> tuple[str, TraceStep]:
        """One sentence about ``item`` by the LLM, checked; the genres say it when it fails."""
        facts = f"{item.display_title} ({', '.join(item.genres) or 'film'})"
        if item.description:
            facts += f". {item.description[:300]}"
        messages = [
            {"role": "system", "content": WRITE_PROMPT.format(facts=facts)},
            *self.chat_turns(dialogue)[-3:],
        ]
        lead = f"I'd suggest {item.display_title}. It's"
        config = GenerationConfig(max_new_tokens=self.config.clause_tokens, stop=[".", "\n"])
        raw = self.llm.chat_batch([messages], config, prefixes=[lead])[0][len(lead) - 4 :]
        usage = self.llm.last_usage
        sentence, refused = checked_clause(raw, item, dialogue)
        text = sentence or f"It's {genre_phrase(item)}"
        step = TraceStep(
            name="write",
            input=messages,
            output={"LLM wrote": raw, "refused": refused or None, "shown": text},
            seconds=usage.seconds,
        )
        return text, step

    def grounded(self, dialogue: Dialogue) -> Iterator[str | Reply]:
        """Stream the grounded reply: the choice first, the LLM's sentence, the alternatives."""
        candidates, retrieve = self.candidates(dialogue)
        if not candidates:
            yield Reply(text=recommendation_text([]), trace=[retrieve], model=self.name)
            return
        if not self.has_preference(dialogue):
            yield from self.elicit(dialogue, candidates, retrieve)
            return
        chosen, choice, read = self.choose(dialogue, candidates)
        chosen = with_reasons(chosen[: self.config.top_k], dialogue, self.catalog)
        first = self.catalog[chosen[0].item_id]
        opening = f"I'd suggest {first.display_title}. "
        yield opening
        sentence, write = self.write(dialogue, first)
        others = [s.title for s in chosen[1:3]]
        rest = sentence + "."
        if others:
            rest += " If that's not it, try " + " or ".join(others) + "."
        yield rest
        yield Reply(
            text=opening + rest,
            items=chosen,
            recommends=True,
            trace=[retrieve, choice, write],
            model=self.name,
            completion_tokens=self.llm.last_usage.completion_tokens,
            prompt_tokens=self.llm.last_usage.prompt_tokens + read,
        )

    def has_preference(self, dialogue: Dialogue) -> bool:
        """Whether the user said anything to choose by: a genre, a decade, a film, or any word
        beyond greetings and "something good to watch"."""
        user_text = " ".join(t.text for t in dialogue.turns if t.role == "user")
        words = set(re.findall(r"[a-z']+", user_text.lower()))
        return bool(
            asked_genres(user_text)
            or asked_decade(user_text)
            or dialogue.mentioned_items()
            or words - GENERIC_WORDS
        )

    def elicit(
        self, dialogue: Dialogue, candidates: list[ScoredItem], retrieve: TraceStep
    ) -> Iterator[str | Reply]:
        """A greeting gets a question back; the most watched films wait on the cards meanwhile."""
        exclude = set(dialogue.mentioned_items())
        ranked = [
            s.model_copy(update={"why": "Popular with many viewers"})
            for s in self._ranked(self.popularity, exclude)
        ]
        text = (
            "Happy to help! What are you in the mood for: a genre, a decade, or a film you loved? "
            f"Meanwhile, many people enjoy {ranked[0].title} and {ranked[1].title}."
        )
        yield text
        step = TraceStep(name="elicit", input="no genre, decade or film named yet", output=text)
        yield Reply(text=text, items=ranked, recommends=True, trace=[retrieve, step])

    # ------------------------------------------------------------------ free naming (baseline)

    def chat_turns(self, dialogue: Dialogue) -> list[dict[str, str]]:
        turns = dialogue.turns[-self.config.context_turns :]
        return [
            {"role": "assistant" if t.role == "system" else "user", "content": t.text}
            for t in turns
        ]

    def messages(self, dialogue: Dialogue, history: UserHistory | None) -> list[dict[str, str]]:
        system = " ".join(filter(None, [SYSTEM_PROMPT, history_note(history, self.catalog)]))
        msgs = [{"role": "system", "content": system}, *self.chat_turns(dialogue)]
        if len(msgs) == 1 or msgs[-1]["role"] != "user":
            msgs.append({"role": "user", "content": "Can you recommend a movie?"})
        return msgs

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature
        )

    def to_reply(self, text: str, dialogue: Dialogue, messages: list[dict[str, str]]) -> Reply:
        exclude = set(dialogue.mentioned_items())
        matches = [
            m
            for m in match_titles(text, self.catalog, self.config.match_cutoff)
            if m[1] not in exclude
        ]
        # Generated order is the ranking; scores decrease with position (1, 1/2, 1/3, ...).
        items = [
            ScoredItem(item_id=item_id, score=1.0 / rank, title=self.catalog[item_id].display_title)
            for rank, (_, item_id, _) in enumerate(matches[: self.config.top_k], start=1)
        ]
        usage = self.llm.last_usage
        trace = [
            TraceStep(name="prompt", input=messages, output=None),
            TraceStep(name="generate", input=self.llm.name, output=text, seconds=usage.seconds),
            TraceStep(
                name="fuzzy match",
                input=candidate_titles(text),
                output=[(c, i, round(s, 1)) for c, i, s in matches],
            ),
        ]
        return Reply(
            text=text.strip(),
            items=items,
            recommends=bool(items),
            trace=trace,
            model=self.name,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        if self.config.grounding == "retrieved":
            return next(p for p in self.grounded(dialogue) if isinstance(p, Reply))
        messages = self.messages(dialogue, history)
        return self.to_reply(self.llm.chat(messages, self.generation()), dialogue, messages)

    def stream(
        self, dialogue: Dialogue, history: UserHistory | None = None
    ) -> Iterator[str | Reply]:
        if self.config.grounding == "retrieved":
            yield from self.grounded(dialogue)
            return
        messages = self.messages(dialogue, history)
        chunks = []
        for delta in self.llm.stream(messages, self.generation()):
            chunks.append(delta)
            yield delta
        yield self.to_reply("".join(chunks), dialogue, messages)
