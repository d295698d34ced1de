"""LLM recommender baselines of LLM-REDIAL (§4.2, Appendix D.2): zero-shot, few-shot and LoRA
fine-tuned, each on the dialogue only or on the dialogue plus the user's historical interactions.

The LLM reads the paper's prompt and writes a list of titles; fuzzy matching (He et al., 2023;
rapidfuzz through ``Catalog.search``) turns the list into a catalog ranking, generated order =
rank, items already mentioned in the dialogue left out. The file follows the method: config,
the four prompts, title matching, fine-tuning (`crs train llm-rec`), then the `CRSModel`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.eval.evaluate import recommender_turns
from backend.llm import GenerationConfig, LocalLLM, Messages, get_llm, with_lora
from backend.mentions import match_title_list
from backend.models.templates import recommendation_text
from backend.registry import CRSModel, ModelConfig, register, save_run_files, timed
from backend.settings import get_settings
from backend.train.batches import epoch_batches
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, Turn, UserHistory

log = logging.getLogger(__name__)

SETTINGS = ("zero-shot", "few-shot", "fine-tuned")


@dataclass
class LLMRecConfig(ModelConfig):
    # What Table 5 varies.
    setting: str = "zero-shot"  # zero-shot | few-shot | fine-tuned
    history: bool = False  # "Dial. + H. I.": the prompt lists the user's history items
    # The LLM.
    llm: str = ""  # empty = CRS_LLM (default: the bundled SmolLM2-135M-Instruct)
    base_url: str = ""  # an OpenAI-compatible endpoint; empty = CRS_LLM_BASE_URL or local
    device: str = ""  # empty = CRS_DEVICE
    # Fine-tuned: the LoRA folder; empty = CRS_HOME/checkpoints/llm-rec/<dataset>[-history].
    adapter: str = ""
    # The prompt.
    n_recommendations: int = 50  # the number the paper's prompt asks for
    context_turns: int = 6  # latest turns shown; keeps a 135M model's prompt short on CPU
    turn_chars: int = 300  # each turn clipped to this many characters, for the same reason
    history_items: int = 20  # latest liked/disliked history items listed
    n_examples: int = 5  # few-shot: the paper's "5 correct examples"
    example_turns: int = 2  # few-shot: turns of context per example, kept short for a small model
    example_chars: int = 150  # few-shot: each example turn clipped to this many characters
    # Decoding and matching.
    max_new_tokens: int = 128  # ~15 titles; the full 50 would take ~400 tokens per turn on CPU
    temperature: float = 0.0  # the paper decodes every LLM baseline at temperature 0
    # 0 = auto: 10 beams for fine-tuned (its single-title targets teach it to stop after one
    # title, so the ranking merges the beams' titles), greedy (1) for the prompted settings.
    beams: int = 0
    match_cutoff: float = 85.0  # fuzzy title score (Catalog.search, 0-100) a name needs to count
    # Fine-tuning (`crs train llm-rec`).
    epochs: int = 1
    max_steps: int = 0  # 0 = run all epochs
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    eval_examples: int = 32  # dev turns whose target loss is measured before and after training

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(
                f"llm-rec: setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}"
            )

    @property
    def num_beams(self) -> int:
        """The beams to decode with: ``beams``, or its per-setting default when 0."""
        if self.beams:
            return self.beams
        return 10 if self.setting == "fine-tuned" else 1


# ----------------------------------------------------------------------------- prompts (App. D.2)

# The paper's wording; the slots ({ } in the paper) start on a new line. Keyed by (few-shot,
# with history); fine-tuning uses the zero-shot prompts (D.2.1 and D.2.2 cover both).
PROMPTS: dict[tuple[bool, bool], str] = {
    (False, False): (
        "Pretend you are a movie recommender system. I will give you a conversation between a "
        "human and assistant. Based on the conversation, you reply me with {n} recommendations "
        "without extra sentences. Here is the conversation:\n{conversation}"
    ),
    (False, True): (
        "Pretend you are a movie recommender system. I will give you a conversation between a "
        "human and assistant and human's history item lists. Based on the conversation and item "
        "lists, you reply me with {n} recommendations without extra sentences. Here is the item "
        "lists:\n{history}\nand here is the conversation:\n{conversation}"
    ),
    (True, False): (
        "Pretend you are a movie recommender system. I will give you a conversation between a "
        "human and assistant and {k} correct examples. Based on the conversation and examples, "
        "you reply me with {n} recommendations without extra sentences. Here is the examples:\n"
        "{examples}\nand here is the conversation:\n{conversation}"
    ),
    (True, True): (
        "Pretend you are a movie recommender system. I will give you a conversation between a "
        "human and assistant, {k} correct examples and human's history item lists. Based on the "
        "conversation, examples, item lists, you reply me with {n} recommendations without extra "
        "sentences. Here is the examples:\n{examples}\nhere is the item lists:\n{history}\n"
        "and here is the conversation:\n{conversation}"
    ),
}


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 3].rstrip() + "..."


def conversation_text(turns: Sequence[Turn], chars: int) -> str:
    """Turns as "Human: ..." / "Assistant: ..." lines, each clipped to ``chars`` characters."""
    lines = [
        f"{'Assistant' if t.role == 'system' else 'Human'}: {_clip(t.text, chars)}" for t in turns
    ]
    return "\n".join(lines) or "(no conversation yet)"


def history_text(history: UserHistory | None, catalog: Catalog, n: int) -> str:
    """The user's latest ``n`` liked and disliked items as two title lists."""
    liked: list[str] = []
    disliked: list[str] = []
    if history is not None:
        likes = {i.item_id for i in history.liked}
        dislikes = {i.item_id for i in history.disliked}
        rated = [
            i.item_id
            for i in history.interactions
            if i.item_id in catalog and (i.item_id in likes or i.item_id in dislikes)
        ]
        for item_id in rated[-n:]:
            (liked if item_id in likes else disliked).append(catalog[item_id].display_title)
    return f"liked: {'; '.join(liked) or 'none'}\ndisliked: {'; '.join(disliked) or 'none'}"


def gold_titles(turn: Turn, catalog: Catalog) -> list[str]:
    """The titles a recommender turn names, one per item, in order: the target of fine-tuning."""
    return [catalog[i].display_title for i in dict.fromkeys(turn.items) if i in catalog]


@dataclass
class Example:
    """One few-shot "correct example": a short context and the titles the real turn named."""

    conversation: str
    titles: list[str]

    def text(self, number: int) -> str:
        return f"Example {number}:\n{self.conversation}\nRecommendations:\n" + "\n".join(
            self.titles
        )


def sample_examples(dataset: Dataset, config: LLMRecConfig) -> list[Example]:
    """``n_examples`` recommender turns of the train split, drawn with ``config.seed``."""
    pool = [
        (d, i)
        for d, i in recommender_turns(dataset.splits.get("train", []), rec_only=True)
        if gold_titles(d.turns[i], dataset.catalog)
    ]
    if len(pool) < config.n_examples:
        raise ValueError(
            f"llm-rec few-shot needs {config.n_examples} recommender turns in {dataset.name}'s "
            f"train split, found {len(pool)}; use a dataset with dialogues or setting=zero-shot"
        )
    picked = random.Random(config.seed).sample(pool, config.n_examples)
    return [
        Example(
            conversation_text(d.turns[max(0, i - config.example_turns) : i], config.example_chars),
            gold_titles(d.turns[i], dataset.catalog),
        )
        for d, i in picked
    ]


def build_prompt(
    config: LLMRecConfig,
    catalog: Catalog,
    dialogue: Dialogue,
    history: UserHistory | None = None,
    examples: Sequence[Example] = (),
) -> str:
    """The Appendix D.2 prompt for ``config.setting`` and ``config.history``, filled in."""
    few_shot = config.setting == "few-shot"
    return PROMPTS[few_shot, config.history].format(
        n=config.n_recommendations,
        k=len(examples),
        examples="\n".join(e.text(n) for n, e in enumerate(examples, start=1)),
        history=history_text(history, catalog, config.history_items) if config.history else "",
        conversation=conversation_text(dialogue.turns[-config.context_turns :], config.turn_chars),
    )


# ----------------------------------------------------------------------------- matching


def rank_titles(
    texts: Sequence[str], catalog: Catalog, exclude: set[str], cutoff: float
) -> list[tuple[str, str, float]]:
    """(name, item id, match score) for the titles the texts list, in order, first text first.

    Several texts are the beams of one beam search, best first, so their titles merge in order.
    """
    seen = set(exclude)
    ranked = []
    for text in texts:
        for match in match_title_list(text, catalog, cutoff):
            if match[1] not in seen:
                seen.add(match[1])
                ranked.append(match)
    return ranked


# ----------------------------------------------------------------------------- fine-tuning


def default_adapter(dataset_name: str, history: bool) -> Path:
    """Where `crs train llm-rec` saves the adapter for a dataset and prompt kind."""
    return get_settings().checkpoints / "llm-rec" / (dataset_name + ("-history" if history else ""))


def train_command(dataset_name: str, history: bool) -> str:
    return f"crs train llm-rec --dataset {dataset_name}" + (" --history" if history else "")


def training_pairs(
    dataset: Dataset, split: str, config: LLMRecConfig
) -> list[tuple[Messages, str]]:
    """(prompt messages, target) for every recommender turn of ``split`` with a gold item;
    the target is the gold titles, one per line."""
    pairs = []
    for dialogue, i in recommender_turns(dataset.splits.get(split, []), rec_only=True):
        titles = gold_titles(dialogue.turns[i], dataset.catalog)
        if not titles:
            continue
        history = dataset.histories.get(dialogue.user_id) if dialogue.user_id else None
        prompt = build_prompt(config, dataset.catalog, dialogue.prefix(i), history)
        pairs.append(([{"role": "user", "content": prompt}], "\n".join(titles)))
    return pairs


def encode_pair(tokenizer: Any, messages: Messages, target: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) for the chat template of prompt + target; labels are -100 on the prompt."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": target}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the reply")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # The template's end-of-turn token is part of the target, so the model learns to stop.
    target_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def collate(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad_id] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [-100] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        "labels": torch.tensor(labels, device=device),
    }


def target_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the target tokens only.

    The vocabulary projection runs only where a label is: on CPU it would otherwise cost more
    than the whole 135M-parameter body for a 300-token prompt.
    """
    hf = model.get_base_model()
    hidden = hf.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (B, T, H)
    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    mask = labels != -100
    logits = hf.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
    return F.cross_entropy(logits.float(), labels[mask])


def _mean_loss(
    model: Any, rows: list[tuple[list[int], list[int]]], config: LLMRecConfig, pad: int
) -> float:
    if not rows:
        return float("nan")
    model.eval()
    losses = []
    with torch.inference_mode():
        for b in range(0, len(rows), config.batch_size):
            chunk = rows[b : b + config.batch_size]
            losses.append(target_loss(model, collate(chunk, pad, model.device)).item() * len(chunk))
    model.train()
    return sum(losses) / len(rows)


def train_llm_rec(dataset: Dataset, config: LLMRecConfig, out_dir: Path | None = None) -> Path:
    """Fine-tune a LoRA adapter on ``dataset``'s train recommender turns; returns its folder.

    Input = the inference prompt in the chat template, target = the gold titles; the loss counts
    target tokens only. Saves the adapter, ``config.json`` and ``metrics.json`` (loss per step,
    dev loss before/after, seconds per step, total seconds).
    """
    began = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    settings = get_settings()
    # The same loading as inference (GGUF conversion, dtype, device), on a private copy.
    base = LocalLLM(config.llm or settings.CRS_LLM, device=config.device or settings.CRS_DEVICE)
    tokenizer = base.tokenizer
    model = with_lora(base.model, config.lora_r, config.lora_alpha, config.lora_dropout)
    model.train()
    train = [encode_pair(tokenizer, m, t) for m, t in training_pairs(dataset, "train", config)]
    if not train:
        raise ValueError(
            f"{dataset.name}: the train split has no recommender turn with a catalog item"
        )
    dev_pairs = training_pairs(dataset, "dev", config) or training_pairs(dataset, "train", config)
    dev = [encode_pair(tokenizer, m, t) for m, t in dev_pairs[: config.eval_examples]]
    pad = tokenizer.pad_token_id

    per_step = config.batch_size * config.grad_accum
    total = config.epochs * math.ceil(len(train) / per_step)
    if config.max_steps:
        total = min(total, config.max_steps)
    trainable, params = model.get_nb_trainable_parameters()
    log.info(
        "llm-rec: %d training turns, %d steps of %d, LoRA %d / %d parameters, on %s",
        len(train),
        total,
        per_step,
        trainable,
        params,
        model.device,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    dev_before = _mean_loss(model, dev, config, pad)
    losses: list[float] = []
    rng = random.Random(config.seed)
    lengths = [len(ids) for ids, _ in train]
    batches: list[list[int]] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc="llm-rec", unit="step")
    while len(losses) < total:
        step_loss = 0.0
        for _ in range(config.grad_accum):
            batches = batches or epoch_batches(lengths, config.batch_size, rng)
            loss = target_loss(model, collate([train[i] for i in batches.pop()], pad, model.device))
            (loss / config.grad_accum).backward()
            step_loss += loss.item() / config.grad_accum
        opt.step()
        opt.zero_grad()
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    metrics = {
        "loss": losses,
        "dev_loss": {
            "before": dev_before,
            "after": _mean_loss(model, dev, config, pad),
            "n": len(dev),
        },
        "steps": len(losses),
        "examples_per_step": per_step,
        "train_turns": len(train),
        "epochs_done": len(losses) * per_step / len(train),
        "seconds": seconds,
        "seconds_per_step": seconds / max(len(losses), 1),
        "total_seconds": time.perf_counter() - began,  # with loading and the dev losses
        "trainable_parameters": trainable,
        "device": str(model.device),
    }
    out_dir = out_dir or Path(config.adapter or default_adapter(dataset.name, config.history))
    spec = config.llm or settings.CRS_LLM
    saved = {"model": "llm-rec", "dataset": dataset.name, "base_llm": spec, **asdict(config)}
    save_run_files(out_dir, saved, metrics)
    model.save_pretrained(out_dir)
    log.info("llm-rec adapter saved to %s (dev loss %s)", out_dir, metrics["dev_loss"])
    return out_dir


# ----------------------------------------------------------------------------- the model


@register
class LLMRec(CRSModel):
    name = "llm-rec"
    description = (
        "An LLM asked, with LLM-REDIAL's prompt, for a list of 50 movie titles that fit the "
        "dialogue (and optionally the user's history), zero-shot, few-shot or LoRA fine-tuned; "
        "the titles are fuzzy-matched to the catalog. Its reply only names the top movies."
    )
    config_class = LLMRecConfig
    max_concurrency = 8  # concurrent requests share the local LLM's batch (backend/batching.py)

    def __init__(self, dataset: Dataset, config: LLMRecConfig | None = None):
        super().__init__(dataset, config)
        cfg = self.config
        adapter = None
        if cfg.setting == "fine-tuned":
            adapter = Path(cfg.adapter or default_adapter(dataset.name, cfg.history))
            if not (adapter / "adapter_config.json").is_file():
                raise FileNotFoundError(
                    f"no llm-rec adapter at {adapter}; train one with "
                    f"`{train_command(dataset.name, cfg.history)}` (plus the --data-dir you "
                    "evaluate with, if any)"
                )
            trained = json.loads((adapter / "config.json").read_text())
            if trained.get("history") != cfg.history:
                raise ValueError(
                    f"adapter {adapter} was trained with history={trained.get('history')}; "
                    f"set history={trained.get('history')} or train with `{train_command(dataset.name, cfg.history)}`"
                )
            # The adapter only fits the base model it was trained on.
            cfg.llm = cfg.llm or trained["base_llm"]
        self.examples = sample_examples(dataset, cfg) if cfg.setting == "few-shot" else []
        self.llm = get_llm(
            cfg.llm or None,
            base_url=cfg.base_url or None,
            adapter=adapter,
            device=cfg.device or None,
        )
        self.version = f"{self.llm.name}:{cfg.setting}" + ("+history" if cfg.history else "")

    def messages(self, dialogue: Dialogue, history: UserHistory | None) -> Messages:
        prompt = build_prompt(self.config, self.catalog, dialogue, history, self.examples)
        return [{"role": "user", "content": prompt}]

    def generate(self, conversations: list[Messages]) -> list[list[str]]:
        """Per conversation, the generated list(s): one text, or every beam best first."""
        config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
            num_beams=self.config.num_beams,
            seed=self.config.seed,
        )
        if config.num_beams > 1:
            return [
                [text for text, _ in beams] for beams in self.llm.chat_beams(conversations, config)
            ]
        return [[text] for text in self.llm.chat_batch(conversations, config)]

    def respond_batch(
        self, dialogues: Sequence[Dialogue], histories: Sequence[UserHistory | None] | None = None
    ) -> list[Reply]:
        """One batched LLM call for all dialogues, then fuzzy matching per dialogue."""
        if not dialogues:
            return []
        histories = histories or [None] * len(dialogues)
        conversations = [self.messages(d, h) for d, h in zip(dialogues, histories, strict=True)]
        outputs = self.generate(conversations)
        usage = self.llm.last_usage
        replies = []
        for dialogue, messages, texts in zip(dialogues, conversations, outputs, strict=True):
            matches = rank_titles(
                texts, self.catalog, set(dialogue.mentioned_items()), self.config.match_cutoff
            )[: self.config.top_k]
            # Generated order is the ranking; scores decrease with position (1, 1/2, 1/3, ...).
            items = [
                ScoredItem(
                    item_id=item_id, score=1.0 / rank, title=self.catalog[item_id].display_title
                )
                for rank, (_, item_id, _) in enumerate(matches, start=1)
            ]
            trace = [
                TraceStep(name="prompt", input=messages),
                TraceStep(
                    name="generate",
                    input=f"{self.llm.name}, {len(texts)} beam(s), batch of {len(dialogues)}",
                    output=texts if len(texts) > 1 else texts[0],
                    seconds=usage.seconds,
                ),
                TraceStep(name="fuzzy match", output=[(n, i, round(s, 1)) for n, i, s in matches]),
            ]
            replies.append(
                Reply(
                    text=recommendation_text([self.catalog[s.item_id] for s in items[:3]]),
                    items=items,
                    recommends=bool(items),
                    trace=trace,
                    model=self.name,
                    # The batch's cost, shared evenly between its dialogues.
                    prompt_tokens=usage.prompt_tokens // len(dialogues),
                    completion_tokens=usage.completion_tokens // len(dialogues),
                )
            )
        return replies

    @timed
    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        return self.respond_batch([dialogue], [history])[0]
