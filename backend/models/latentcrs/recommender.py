"""LatentCRS served as a `CRSModel` (§5.1's variants):

- **B**: the user's words and behaviour go through the generative model, p(v|S,x) (Eq. 2);
- **F**: B behind the hard filter (§4.3): the films that meet the extracted constraints first;
- **V**: F, then the LLM checks the first ``rerank`` films against the user's words and the two
  orders are merged (rank sum).

**S** reads the user's history and the films they named in the conversation; **x** is every user
sentence so far (x^u of §3.1). Nothing already seen or shown is recommended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch

from backend.data.base import Dataset
from backend.explain import with_reasons
from backend.models.latentcrs.config import TRAINING_FIELDS, LatentCRSConfig
from backend.models.latentcrs.filter import Vocabulary, extract, hard_filter
from backend.models.latentcrs.intents import behaviour_embeddings
from backend.models.latentcrs.model import GenerativeModel
from backend.models.latentcrs.text import TextEmbedder, embedding_prompt, user_text
from backend.models.popularity import item_counts
from backend.models.sasrec import SASRec, SASRecConfig
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, register, timed
from backend.settings import get_settings
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, UserHistory

NO_WORDS = "I'm looking for a movie."  # x for a conversation with no user words yet


@register
class LatentCRS(CRSModel):
    name = "latentcrs"
    description = (
        "LatentCRS: reads what the user asks for and their watch history through discrete "
        "latent intents learnt by variational EM from behaviour (SASRec) and language; a hard "
        "filter keeps the genres and decade asked for. Good for requests by genre or era."
    )
    config_class = LatentCRSConfig

    def __init__(self, dataset: Dataset, config: LatentCRSConfig | None = None):
        super().__init__(dataset, config)
        ckpt = self.config.checkpoint_dir()
        if not (ckpt / "model.pt").exists():
            raise FileNotFoundError(
                f"no LatentCRS checkpoint at {ckpt}; train one with `crs train latentcrs`"
            )
        trained = json.loads((ckpt / "config.json").read_text())
        # The checkpoint's training fields describe the weights; the rest stay run-time choices.
        self.config = LatentCRSConfig(
            **{**asdict(self.config), **{k: trained[k] for k in TRAINING_FIELDS if k in trained}}
        )
        saved = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=False)
        if saved["item_ids"] != self.catalog.ids:
            raise ValueError(f"checkpoint {ckpt} was trained on another catalog; retrain it")
        backbone = get_settings().checkpoints / saved["backbone"]  # an absolute path stays
        self.backbone = SASRec(dataset, SASRecConfig(checkpoint=str(backbone)))
        self.embedder = TextEmbedder(self.config.text_encoder, self.config.device)
        self.intents = saved["intents"]
        self.labels = saved["labels"]
        d = self.intents.shape[1]
        state = saved["nets"]["generative"]
        text_dim = state["project_x.weight"].shape[1]  # the encoder it was trained with
        self.gen = GenerativeModel(d, text_dim, self.config.ffn_hidden, 0.0, state["items"])
        self.gen.load_state_dict(state)
        self.gen.eval()
        self.vocabulary = Vocabulary.of(self.catalog)
        counts = item_counts(dataset)
        self.popularity = torch.tensor([[float(counts.get(i, 0)) for i in self.catalog.ids]])
        self.version = f"{ckpt.name}@{int((ckpt / 'model.pt').stat().st_mtime)}"

    def _llm(self):
        from backend.llm import get_llm

        return get_llm()

    def _sequence(self, dialogue: Dialogue, history: UserHistory | None) -> list[int]:
        if not self.config.use_history:
            return []
        ids = [i.item_id for i in history.interactions] if history else []
        ids += [i for t in dialogue.turns if t.role == "user" for i in t.items]
        index = self.catalog.index
        return [index[i] for i in ids if i in index]

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        cfg = self.config
        histories = histories or [None] * len(dialogues)
        start = time.perf_counter()
        seqs = [self._sequence(d, h) for d, h in zip(dialogues, histories, strict=True)]
        texts = [user_text(d) or NO_WORDS for d in dialogues]
        S = self._states(seqs)
        x = torch.from_numpy(self.embedder(texts))
        embed_tokens = self._embed_tokens(texts)
        with torch.inference_mode():
            log_f = self.gen.log_f(S, x, self.intents)
            scores = self.gen.scores(S, x, self.intents, cfg.score)
            if cfg.ranker == "sasrec":
                scores = self.backbone.net.scores(S)[:, 1:]
        if cfg.ranker == "popularity":
            scores = self.popularity.expand(len(dialogues), -1)
        llm = self._llm() if cfg.variant != "B" and cfg.extract == "llm" else None
        constraints = (
            extract(dialogues, self.catalog, llm, self.vocabulary) if cfg.variant != "B" else None
        )
        extract_usage = (
            (llm.last_usage.prompt_tokens, llm.last_usage.completion_tokens) if llm else (0, 0)
        )
        seconds = (time.perf_counter() - start) / max(1, len(dialogues))
        replies = []
        for row, (dialogue, history, seq) in enumerate(
            zip(dialogues, histories, seqs, strict=True)
        ):
            exclude = set(dialogue.mentioned_items()) | (
                {i.item_id for i in history.interactions} if history else set()
            )
            row_scores = dict(zip(self.catalog.ids, scores[row].tolist(), strict=True))
            top = log_f[row].exp().topk(3)
            trace = [
                TraceStep(
                    name="behaviour (SASRec)",
                    input=f"{len(seq)} films: history and the films the user named",
                    output=f"S, {self.intents.shape[1]}-d",
                ),
                TraceStep(
                    name=f"words ({cfg.text_encoder})",
                    input=texts[row],
                    output=f"x, {x.shape[1]}-d",
                ),
                TraceStep(
                    name="intent p(m|S,x)",
                    output=[
                        {"intent": int(j), "label": self.labels[int(j)], "p": round(float(p), 3)}
                        for p, j in zip(top.values, top.indices, strict=True)
                    ],
                ),
            ]
            prompt_tokens, completion_tokens = embed_tokens[row], int(cfg.text_encoder == "smollm2")
            rank_by = row_scores
            if constraints is not None:
                kept, steps = self._filter(constraints[row], exclude)
                # The films that meet the constraints first, each group in the model's order.
                rank_by = {i: v + (1e6 if i in kept else 0.0) for i, v in row_scores.items()}
                trace += steps
                prompt_tokens += extract_usage[0] // len(dialogues)
                completion_tokens += extract_usage[1] // len(dialogues)
            ranked = [
                s.model_copy(update={"score": row_scores[s.item_id]})  # the model's own score
                for s in self._ranked(rank_by, exclude)
            ]
            ranked = with_reasons(ranked, dialogue, self.catalog)
            if cfg.variant == "V" and ranked:
                ranked, step, used = self._verified(ranked, texts[row])
                trace.append(step)
                prompt_tokens += used
            trace.append(
                TraceStep(name="rank", output=[s.title for s in ranked[:5]], seconds=seconds)
            )
            replies.append(
                Reply(
                    text=recommendation_text([self.catalog[s.item_id] for s in ranked[:3]]),
                    items=ranked,
                    recommends=bool(ranked),
                    trace=trace,
                    model=self.name,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
            )
        return replies

    def _states(self, seqs: list[list[int]]) -> torch.Tensor:
        """**S**: SASRec's state after each sequence (catalog indices, 0-based)."""
        ones = [[i + 1 for i in s] for s in seqs]
        return torch.from_numpy(
            behaviour_embeddings(self.backbone.net, ones, self.config.max_history)
        )

    def _embed_tokens(self, texts: list[str]) -> list[int]:
        """LLM tokens read to embed each text (Table 6): none for the sentence encoder."""
        if self.config.text_encoder != "smollm2":
            return [0] * len(texts)
        llm = self._llm()
        return [llm.count_tokens(embedding_prompt(t)) for t in texts]

    def _filter(self, constraints, exclude: set[str]) -> tuple[set[str], list[TraceStep]]:
        """The ids of the unseen films that meet ``constraints`` (all of them when there is no
        constraint), and the trace of how they were read and applied."""
        candidates = [self.catalog[i] for i in self.catalog.ids if i not in exclude]
        kept, relaxed = hard_filter(candidates, constraints, self.config.min_kept)
        steps = [
            TraceStep(
                name="constraints (hard filter)",
                input=constraints.llm_answer or "read by rule",
                output={
                    "kept": constraints.describe(),
                    "from_llm": constraints.from_llm,
                    "added_by_rule": constraints.added_by_rule,
                    "dropped": constraints.dropped,
                    "people": "matched by name"
                    if self.vocabulary.people
                    else "no cast data in this catalog",
                },
            ),
            TraceStep(
                name="filter",
                input=constraints.describe() or "no strict constraint",
                output={"kept": len(kept), "of": len(candidates), "relaxed": relaxed},
            ),
        ]
        return kept, steps

    def _verified(self, ranked: list[ScoredItem], text: str):
        """Variant V: the LLM scores the first ``rerank`` titles against the user's words, and the
        model's and the LLM's orders are merged by rank sum."""
        head, tail = ranked[: self.config.rerank], ranked[self.config.rerank :]
        llm = self._llm()
        prompt = f'A movie fan asked: "{text}". The movie that fits the request best is'
        scores = llm.score_options(prompt, [f" {s.title}" for s in head], mean=True)
        by_llm = sorted(range(len(head)), key=lambda i: -scores[i])
        llm_rank = {i: r for r, i in enumerate(by_llm)}
        order = sorted(range(len(head)), key=lambda i: (i + llm_rank[i], i))
        step = TraceStep(
            name="verify (LLM)", input=len(head), output=[head[i].title for i in order[:5]]
        )
        return [head[i] for i in order] + tail, step, llm.last_usage.prompt_tokens

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]
