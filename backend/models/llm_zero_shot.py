"""Zero-shot LLM recommender: the LLM answers the dialogue and names movies in its reply.

Names in the reply are mapped to catalog ids with rapidfuzz (``Catalog.search``), the fuzzy
matching LLM-REDIAL §4.2 applies (after He et al., 2023) to turn generated titles into a ranking.
The reply text shown to the user is the LLM's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from backend.catalog import Catalog
from backend.llm import GenerationConfig, get_llm
from backend.mentions import candidate_titles, match_titles
from backend.registry import CRSModel, ModelConfig, register, timed
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, UserHistory

SYSTEM_PROMPT = (
    "You are a friendly movie recommender chatting with a user. Reply in two or three short "
    "sentences and recommend specific movies, writing each title with its year, like "
    "Inception (2010)."
)


@dataclass
class LLMZeroShotConfig(ModelConfig):
    llm: str = ""  # empty = CRS_LLM (default: the bundled SmolLM2-135M-Instruct)
    base_url: str = ""  # an OpenAI-compatible endpoint; empty = CRS_LLM_BASE_URL or local
    max_new_tokens: int = 96
    temperature: float = 0.0  # LLM-REDIAL decodes its LLM baselines at temperature 0
    context_turns: int = 8  # keeps the prompt short enough for a 135M model on CPU
    match_cutoff: float = 85.0  # fuzzy title score (Catalog.search, 0-100) a name needs to count


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


@register
class LLMZeroShot(CRSModel):
    name = "llm-zero-shot"
    description = (
        "A general chat LLM, prompted zero-shot, answers the user and names movies in its reply; "
        "names are matched to the catalog. Fluent and open-ended; its knowledge of titles "
        "depends on the LLM's size."
    )
    config_class = LLMZeroShotConfig
    max_concurrency = 8  # concurrent requests share the local LLM's batch (backend/batching.py)

    def __init__(self, dataset, config: LLMZeroShotConfig | None = None):
        super().__init__(dataset, config)
        self.llm = get_llm(self.config.llm or None, base_url=self.config.base_url or None)
        self.version = self.llm.name

    def messages(self, dialogue: Dialogue, history: UserHistory | None) -> list[dict[str, str]]:
        system = " ".join(filter(None, [SYSTEM_PROMPT, history_note(history, self.catalog)]))
        turns = dialogue.turns[-self.config.context_turns :]
        msgs = [{"role": "system", "content": system}]
        msgs += [
            {"role": "assistant" if t.role == "system" else "user", "content": t.text}
            for t in turns
        ]
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
        messages = self.messages(dialogue, history)
        return self.to_reply(self.llm.chat(messages, self.generation()), dialogue, messages)

    def stream(
        self, dialogue: Dialogue, history: UserHistory | None = None
    ) -> Iterator[str | Reply]:
        messages = self.messages(dialogue, history)
        chunks = []
        for delta in self.llm.stream(messages, self.generation()):
            chunks.append(delta)
            yield delta
        yield self.to_reply("".join(chunks), dialogue, messages)
