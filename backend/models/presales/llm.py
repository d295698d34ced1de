"""The LLM of §3.2: an instruction-tuned chat model fine-tuned with LoRA on {instruction, input,
output} samples of the four tasks (the paper tunes ChatGLM-6B and Chinese-Alpaca-7B; here the
bundled SmolLM2-135M-Instruct, or any model at an OpenAI-compatible endpoint, inference only).

How its answers are read: understanding and generation are greedy text; elicitation scores each
attribute option the train split knows as the answer's continuation (a ranking, so Acc/Hit@5/
MRR@5 exist beside P/R/F1); recommendation scores the 20 letters A-T as the first answer token
(Table 7 asks for one letter; the scores give the CRS→LLM and mix rows a full ranking). An
endpoint model writes its answers and they are parsed (`parse_pairs`, `parse_letter`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from backend.catalog import Catalog
from backend.llm import (
    LLM,
    GenerationConfig,
    LocalLLM,
    Messages,
    checkpoint_layers,
    get_llm,
    with_lora,
)
from backend.models.llm_rec import collate, encode_pair, target_loss
from backend.models.presales.candidates import LETTERS, parse_letter
from backend.models.presales.prompts import llm_prompt, llm_target
from backend.models.presales.schema import Example, format_pairs, parse_pairs
from backend.models.presales.trainer import Schedule, run_steps
from backend.settings import get_settings

MAX_NEW_TOKENS = {"understand": 32, "elicit": 16, "generate": 48}


@dataclass
class LLMConfig:
    llm: str = ""  # empty = CRS_LLM
    base_url: str = ""  # an OpenAI-compatible endpoint (inference only); empty = local
    device: str = ""
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 5e-4
    steps: int = 160  # one example of each task per step
    eval_every: int = 40
    dev_examples: int = 16  # per task
    # CRS→LLM prompts: 5.58 GB peak without, 1.64 GB with, +26% time (bench/presales_memory.py).
    gradient_checkpointing: bool = True
    seed: int = 0


def messages(example: Example, catalog: Catalog, crs_output: str = "") -> Messages:
    return [{"role": "user", "content": llm_prompt(example, catalog, crs_output)}]


def train_llm(
    train: dict[str, list[Example]],
    dev: dict[str, list[Example]],
    catalogs: dict[str, Catalog],
    cfg: LLMConfig,
    out_dir: Path,
    crs_outputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """LoRA instruction tuning; with ``crs_outputs`` (example id -> the CRS's output as text)
    every input carries it (§3.4). The adapter with the lowest dev loss is saved in ``out_dir``."""
    crs_outputs = crs_outputs or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base = LocalLLM(cfg.llm or get_settings().CRS_LLM, device=cfg.device or "auto")
    model = with_lora(base.model, cfg.lora_r, cfg.lora_alpha, 0.0)
    if cfg.gradient_checkpointing:
        checkpoint_layers(model)
    tokenizer = base.tokenizer

    def encoded(example: Example) -> tuple[list[int], list[int]]:
        catalog = catalogs[example.dataset]
        chat = messages(example, catalog, crs_outputs.get(example.example_id, ""))
        return encode_pair(tokenizer, chat, llm_target(example))

    rows = {task: [encoded(e) for e in examples] for task, examples in train.items() if examples}
    dev_rows = [encoded(e) for task in dev.values() for e in task[: cfg.dev_examples]]
    pad = tokenizer.pad_token_id

    def step_loss(rng: random.Random) -> torch.Tensor:
        # One example of each task, each run unpadded: a recommendation prompt (20 candidates)
        # is about three times the others, and padding them all to it would triple the step.
        picked = [rng.choice(r) for r in rows.values()]
        losses = [target_loss(model, collate([r], pad, model.device)) for r in picked]
        return torch.stack(losses).mean()

    def dev_loss() -> float:
        total = sum(target_loss(model, collate([r], pad, model.device)).item() for r in dev_rows)
        return total / max(len(dev_rows), 1)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0
    )
    run_config = {
        "model": "presales-llm",
        **asdict(cfg),
        "with_crs": bool(crs_outputs),
        "train": {t: len(r) for t, r in rows.items()},
    }
    return run_steps(
        "presales-llm",
        model,
        optimizer,
        step_loss,
        dev_loss,
        lambda: model.save_pretrained(out_dir),
        Schedule(cfg.steps, cfg.eval_every),
        out_dir / "train_state.pt",
        run_config,
        cfg.seed,
    )


class LLMPartner:
    """The LLM at inference: a local model (with its adapter merged) or an endpoint."""

    def __init__(self, cfg: LLMConfig, adapter: Path | None = None):
        self.llm: LLM = get_llm(cfg.llm or None, cfg.base_url or "", adapter, cfg.device or None)

    @property
    def local(self) -> bool:
        return isinstance(self.llm, LocalLLM)

    def _prompt_text(self, chat: Messages) -> str:
        tokenizer = self.llm.tokenizer  # type: ignore[attr-defined]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    def texts(self, chats: list[Messages], task: str) -> list[str]:
        """Greedy answers to several prompts at once (rows of one batch)."""
        config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS[task], temperature=0.0)
        return [t.strip() for t in self.llm.chat_batch(chats, config)]

    def option_scores(self, chat: Messages, options: list[str]) -> tuple[list[float], str]:
        """Each elicitation option's score (mean token log-likelihood as the answer) and the
        answer as text; an endpoint's written answer puts the options it names first."""
        if self.local:
            scores = self.llm.score_options(self._prompt_text(chat), options, mean=True)
            return scores, options[max(range(len(options)), key=scores.__getitem__)]
        answer = self.texts([chat], "elicit")[0]
        named = {p.text() for p in parse_pairs(answer)} | {p.attr for p in parse_pairs(answer)}
        return [float(o in named) for o in options], answer

    def letter_scores(self, chat: Messages, n: int) -> tuple[list[float], str]:
        """The score of each of the first ``n`` letters as the answer, and the answer."""
        if self.local:
            scores = self.llm.score_options(self._prompt_text(chat), list(LETTERS[:n]))
            return scores, LETTERS[max(range(n), key=scores.__getitem__)]
        answer = self.llm.chat(chat, GenerationConfig(max_new_tokens=8, temperature=0.0))
        index = parse_letter(answer, n)
        return [float(i == index) for i in range(n)], answer


def understand_output(text: str) -> str:
    """A written understanding answer, normalised to `format_pairs`."""
    return format_pairs(parse_pairs(text))
