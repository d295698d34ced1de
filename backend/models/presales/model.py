"""`presales`: the four pre-sales tasks run turn by turn in the demo, with the partner's
contribution shown in the trace.

Each reply: understanding of the user's last utterance, the attribute the staff would ask next,
a recommendation over the whole catalog and a response. The CRS ranks the catalog; its top 20
become the lettered candidates the LLM reads (the study's candidate sets hold a gold film, which
a live turn has not). By variant: ``llm2crs`` — the LLM's outputs go to the CRS as ``[LLM]`` hints
and its pick is fused into the user representation (Eq. 4); ``crs2llm`` — the CRS's outputs and
ranking go into the LLM's input and the LLM's answers are used; ``crs`` and ``llm`` alone.
The response must name the top film; a response that does not is replaced by a plain sentence
that does (a 135M generator is checked, not trusted).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from backend.data.base import Dataset
from backend.explain import why
from backend.models.latentcrs.filter import Vocabulary
from backend.models.presales.candidates import N_CANDIDATES
from backend.models.presales.crs import CRSConfig, build_crs
from backend.models.presales.evaluate import crs_predict, llm_predict_batch, partner_text, pick_of
from backend.models.presales.grounding import ground
from backend.models.presales.llm import LLMConfig, LLMPartner
from backend.models.presales.schema import Example, Pair, parse_pairs
from backend.models.presales.silver import Labeller, annotate
from backend.registry import CRSModel, ModelConfig, register, timed
from backend.settings import get_settings
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, UserHistory

VARIANTS = ("best", "llm2crs", "crs2llm", "crs", "llm")
STUDY_COMMAND = "python scripts/presales_study.py"


@dataclass
class PresalesConfig(ModelConfig):
    variant: str = "best"  # best = the one the study chose on dev (served.json)
    run: str = "study"  # CRS_HOME/presales/<run>, written by scripts/presales_study.py
    # Which of the run's catalogs the served one is (MovieLens-100K is LLM-REDIAL's: same ids).
    trained_on: str = "llm-redial"
    llm: str = ""  # empty = CRS_LLM
    base_url: str = ""  # an endpoint for the LLM role (its answers are parsed, not scored)
    device: str = ""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"presales: variant must be one of {', '.join(VARIANTS)}")


@register
class Presales(CRSModel):
    name = "presales"
    description = (
        "Pre-sales LLM ⇄ CRS collaboration: a UniMIND-style CRS and an instruction-tuned LLM "
        "understand the request, choose what to ask, recommend from the whole catalog and write "
        "the reply, each reading the other's output. Good for requests by genre, era or person."
    )
    config_class = PresalesConfig

    def __init__(self, dataset: Dataset, config: PresalesConfig | None = None):
        super().__init__(dataset, config)
        root = get_settings().CRS_HOME / "presales" / self.config.run
        served = root / "served.json"
        if not served.is_file():
            raise FileNotFoundError(
                f"no pre-sales study at {root}; run `{STUDY_COMMAND}` first (hours on CPU; "
                "`--smoke` for a quick wiring check)"
            )
        chosen = json.loads(served.read_text())
        self.variant = chosen["variant"] if self.config.variant == "best" else self.config.variant
        self.options: list[str] = chosen["options"]
        crs_dir = root / ("crs-llm2crs" if self.variant == "llm2crs" else "crs-full")
        llm_dir = root / ("llm-crs2llm" if self.variant == "crs2llm" else "llm-full")
        self.catalogs = {self.config.trained_on: self.catalog}
        device = self.config.device
        cfg = CRSConfig(device=device, fusion=self.variant == "llm2crs", hints=True)
        self.crs = build_crs(self.catalogs, cfg, crs_dir)
        self.crs.eval()
        self.llm = None
        if self.variant != "crs":
            llm_cfg = LLMConfig(llm=self.config.llm, base_url=self.config.base_url, device=device)
            adapter = None if self.config.base_url else llm_dir
            self.llm = LLMPartner(llm_cfg, adapter)
        self.labeller = Labeller(self.catalog)
        self.vocabulary = Vocabulary.of(self.catalog)
        self.version = f"{self.variant}@{int(served.stat().st_mtime)}"

    # --- the four tasks on a live dialogue

    def _examples(self, dialogue: Dialogue) -> dict[str, Example]:
        turns = annotate(dialogue, self.labeller)
        last = turns[-1]
        context = turns[:-1] if last.role == "user" else turns
        base = {
            "dataset": self.config.trained_on,
            "split": "live",
            "dialogue_id": dialogue.id,
            "user_id": dialogue.user_id or dialogue.id,
            "turn": len(turns),
            "mentioned": dialogue.mentioned_items(),
        }
        return {
            "understand": Example(task="understand", context=context, current=last.text, **base),
            "elicit": Example(task="elicit", context=turns, **base),
            "recommend": Example(task="recommend", context=turns, **base),
        }

    def _llm(self, example: Example, crs_output: str = "") -> dict[str, Any]:
        assert self.llm is not None
        outputs = {example.example_id: crs_output} if crs_output else {}
        return llm_predict_batch(self.llm, [example], self.catalogs, self.options, outputs)[0]

    def _crs(self, example: Example, llm: dict[str, Any] | None = None) -> dict[str, Any]:
        hint = partner_text(example, llm) if llm and example.task != "recommend" else ""
        pick = pick_of(example, llm) if llm else None
        with torch.no_grad():
            return crs_predict(self.crs, example, self.options, hint, pick)

    def _task(self, example: Example, trace: list[TraceStep]) -> dict[str, Any]:
        """One task by the variant's recipe; the partner's part goes into the trace."""
        began = time.perf_counter()
        if self.variant == "crs":
            out = self._crs(example)
        elif self.variant == "llm":
            out = self._llm(example)
        elif self.variant == "llm2crs":
            partner = self._llm(example)
            trace.append(self._partner_step(example, "LLM", partner, began))
            out = self._crs(example, partner)
        else:
            partner = self._crs(example)
            trace.append(self._partner_step(example, "CRS", partner, began))
            out = self._llm(example, partner_text(example, partner))
        trace.append(
            TraceStep(
                name=example.task,
                input=None,
                output=out.get("text"),
                seconds=round(time.perf_counter() - began, 2),
            )
        )
        return out

    def _partner_step(
        self, example: Example, who: str, out: dict[str, Any], began: float
    ) -> TraceStep:
        shown = partner_text(example, out)
        if example.task == "recommend" and out.get("ranking"):
            top = self.catalog[out["ranking"][0]].display_title
            shown = f"{out['text']}: {top}" if who == "LLM" else f"{shown} ({out['text']} = {top})"
        return TraceStep(
            name=f"partner {who} ({example.task})",
            output=shown,
            seconds=round(time.perf_counter() - began, 2),
        )

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        trace: list[TraceStep] = []
        examples = self._examples(dialogue)
        understood = parse_pairs(self._task(examples["understand"], trace)["text"])
        ask = parse_pairs(self._task(examples["elicit"], trace)["text"])
        grounded = ground(understood, dialogue, self.catalog, self.vocabulary)
        trace.append(TraceStep(name="needs → catalog", output=grounded.trace()))
        rec = examples["recommend"]
        # The CRS ranks the films that meet the needs; its top 20 are the LLM's letters A-T.
        with torch.no_grad():
            scores = self.crs.rank(rec)
        first = sorted(grounded.allowed & scores.keys(), key=lambda i: -scores[i])
        # Shuffled, as in training, so that the letter says nothing about the CRS's order.
        rec.candidates = first[:N_CANDIDATES]
        random.Random(dialogue.as_text()).shuffle(rec.candidates)
        out = self._task(rec, trace)
        order = out["ranking"] + [i for i in first if i not in out["ranking"]]
        items = [
            ScoredItem(
                item_id=i,
                score=float(len(order) - r),
                title=self.catalog[i].display_title,
                why=why(self.catalog[i], dialogue, self.catalog),
            )
            for r, i in enumerate(order[: self.config.top_k])
        ]
        moved = [i.title for i in items[:5] if i.item_id not in first[:5]]
        trace.append(
            TraceStep(
                name="recommend (final)",
                output={"top 5": [i.title for i in items[:5]], "moved into the top 5": moved},
            )
        )
        text = self._reply(examples, ask, items, trace)
        return Reply(text=text, items=items, recommends=bool(items), trace=trace)

    def _reply(
        self,
        examples: dict[str, Example],
        ask: list[Pair],
        items: list[ScoredItem],
        trace: list[TraceStep],
    ) -> str:
        top = items[0] if items else None
        context = examples["recommend"].context
        gen = Example(
            task="generate",
            dataset=self.config.trained_on,
            split="live",
            dialogue_id=examples["recommend"].dialogue_id,
            user_id=examples["recommend"].user_id,
            turn=examples["recommend"].turn,
            context=context,
            label=ask,
            items=[top.item_id] if top else [],
        )
        written = self._task(gen, trace)["text"].strip()
        if top is None:
            return written or "What kind of movie are you in the mood for?"
        title = self.catalog[top.item_id].title
        if title.casefold() in written.casefold():
            return written
        reason = f" {top.why}." if top.why else ""
        fallback = f"How about {top.title}?{reason}"
        trace.append(
            TraceStep(
                name="reply check",
                output=f"the generated reply did not name {top.title}; a plain sentence is used",
            )
        )
        return fallback
