"""Continuous batching for a local causal LM: concurrent generations share every forward pass.

Each generation submitted to a `Batcher` becomes a row of one running batch. Newcomers are
prefilled together (left-padded, with an attention mask), their KV cache is merged into the
batch's, and from then on one decode step produces the next token of every row. Rows keep their
own settings (greedy or seeded sampling, repetition penalty, lengths, stop strings), leave as soon
as they end or are cancelled, and newcomers join at the next step. A lone request starts at once;
while a batch runs, newcomers gather for up to ``window_s`` so that one prefill serves several.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from backend.llm import GenerationConfig

log = logging.getLogger(__name__)


@dataclass
class BatchingConfig:
    """How a `Batcher` groups concurrent generations."""

    # Long enough for a burst of requests to share one prefill, short next to a decode step's cost.
    window_s: float = 0.03
    max_batch: int = 32  # rows decoded together (an eval's chat_batch of 32 runs at once)


_DONE = object()


class Request:
    """One generation in a `Batcher`: its token ids arrive on ``ids()`` as they are produced."""

    def __init__(self, prompt: list[int], config: GenerationConfig):
        self.prompt = prompt
        self.config = config
        self.generated: list[int] = []
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self.peak_batch = 0  # the most rows it shared a decode step with (1 = it ran alone)
        self.stops = [s for s in config.stop or [] if s]
        # A token decodes to at least one character, so this many tokens cover the longest stop.
        self.stop_window = max(map(len, self.stops), default=0) + 1
        self.generator: torch.Generator | None = None
        if config.temperature > 0:
            self.generator = torch.Generator().manual_seed(config.seed)
        self.ended = False  # set by the batcher's thread once the row needs no more steps
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def cancel(self) -> None:
        """Stop this row at the next step; the other rows carry on."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def ids(self) -> Iterator[int]:
        """The generated token ids as they come (EOS included); raises what failed the row."""
        while (token := self._out.get()) is not _DONE:
            yield token
        if self.error is not None:
            raise self.error

    def wait(self) -> None:
        """Block until the row has ended (finished, cancelled or failed); never raises."""
        self._done.wait()

    def add(self, token: int, now: float) -> None:
        self.generated.append(token)
        if self.first_token_at is None:
            self.first_token_at = now
        self._out.put(token)

    def finish(self, error: BaseException | None = None) -> None:
        self.ended = True
        self.error = error
        self.finished_at = time.perf_counter()
        self._out.put(_DONE)
        self._done.set()


def detokenize(tokenizer: Any, ids: Iterable[int]) -> Iterator[str]:
    """Text deltas of a stream of token ids; they join to ``tokenizer.decode(all ids)``.

    A delta is held back while the text ends in an incomplete UTF-8 character.
    """
    seen: list[int] = []
    emitted = ""
    for token in ids:
        seen.append(token)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(emitted):
            continue
        yield text[len(emitted) :]
        emitted = text


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``x`` padded with zeros at the start of ``dim`` (counted from the end) up to ``length``."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    return F.pad(x, (0, 0) * (-dim - 1) + (missing, 0))


class Batcher:
    """Runs every submitted generation of one model in a shared, continuously refilled batch.

    A thread starts with the first request and ends when no row is left. ``model_lock`` is taken
    around each forward pass, so other users of the model (beam search, scoring) fit in between.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos: list[int],
        model_lock: threading.Lock,
        config: BatchingConfig | None = None,
    ):
        self.model, self.tokenizer, self.eos = model, tokenizer, set(eos)
        self.model_lock = model_lock
        self.config = config or BatchingConfig()
        self.device = next(model.parameters()).device
        self._queue_lock = threading.Lock()
        self._waiting: list[Request] = []
        self._worker: threading.Thread | None = None
        # The running batch, owned by the worker thread: row i of every tensor is rows[i].
        self._rows: list[Request] = []
        self._cache: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # (B, T) 1 = real token, 0 = padding
        self._positions = torch.zeros(0, dtype=torch.long)  # (B,) position of the next token
        self._next = torch.zeros(0, dtype=torch.long)  # (B,) sampled, not yet in the cache
        self._joinable = True

    def submit(
        self, prompts: list[list[int]], config: GenerationConfig | Sequence[GenerationConfig]
    ) -> list[Request]:
        """Queue one generation per prompt (token ids), with one config or one per prompt;
        they are admitted together."""
        configs = config if isinstance(config, Sequence) else [config] * len(prompts)
        if len(configs) != len(prompts):
            raise ValueError(
                f"got {len(configs)} configs for {len(prompts)} prompts; pass one each"
            )
        requests = [Request(p, c) for p, c in zip(prompts, configs, strict=True)]
        with self._queue_lock:
            self._waiting.extend(requests)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="batcher", daemon=True)
                self._worker.start()
        return requests

    # --- the worker thread ------------------------------------------------------------------

    def _serve(self) -> None:
        with torch.inference_mode():
            while True:
                self._drop_ended()
                with self._queue_lock:
                    if not self._rows and not self._waiting:
                        self._worker = None
                        return
                    newcomers = self._admit()
                try:
                    if newcomers:
                        self._prefill(newcomers)
                    if self._rows:
                        self._step()
                # A failed forward pass fails the rows in it, not the batcher.
                except Exception as err:
                    log.exception("batched generation failed")
                    for request in {*self._rows, *newcomers}:
                        if not request.ended:
                            request.finish(err)
                    self._rows, self._cache = [], None

    def _admit(self) -> list[Request]:
        """The waiting requests that join now (the caller holds the queue lock)."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.finish()
        free = self.config.max_batch - len(self._rows)
        if not self._waiting or free <= 0:
            return []
        if self._rows:
            if not self._joinable:
                return []
            waited = time.perf_counter() - self._waiting[0].submitted
            if waited < self.config.window_s and len(self._waiting) < free:
                return []
        newcomers, self._waiting = self._waiting[:free], self._waiting[free:]
        return newcomers

    def _prefill(self, newcomers: list[Request]) -> None:
        """Run the newcomers' prompts, sample their first tokens and merge them into the batch."""
        for request in newcomers:
            if request.config.max_new_tokens < 1:
                request.finish()
        newcomers = [r for r in newcomers if not r.ended]
        if not newcomers:
            return
        batch = self.tokenizer.pad(
            {"input_ids": [r.prompt for r in newcomers]}, padding_side="left", return_tensors="pt"
        )
        mask = batch["attention_mask"].to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding sits at 0 and is masked anyway
        with self.model_lock:
            out = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits are sampled
            )
        tokens = self._sample(newcomers, out.logits[:, -1])
        self._merge(newcomers, out.cache, mask, positions[:, -1] + 1, tokens)
        for request in newcomers:
            request.peak_batch = max(request.peak_batch, len(newcomers))
        self._emit(newcomers, tokens)

    def _merge(
        self,
        rows: list[Request],
        cache: Any,
        mask: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
    ) -> None:
        """Append prefilled rows to the running batch, left-padding whichever cache is shorter."""
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            self._positions, self._next = positions, tokens
            # Only plain growing layers can be padded and concatenated; others run static batches.
            self._joinable = isinstance(cache, DynamicCache) and all(
                type(layer) is DynamicLayer for layer in cache.layers
            )
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, length, -2), _left_pad(new.keys, length, -2)])
            old.values = torch.cat(
                [_left_pad(old.values, length, -2), _left_pad(new.values, length, -2)]
            )
        self._mask = torch.cat([_left_pad(self._mask, length, -1), _left_pad(mask, length, -1)])
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, tokens])
        self._rows = self._rows + rows

    def _step(self) -> None:
        """One decode step: every row's pending token goes in, its next token comes out."""
        rows = self._rows
        for request in rows:
            request.peak_batch = max(request.peak_batch, len(rows))
        self._mask = F.pad(self._mask, (0, 1), value=1)
        with self.model_lock:
            out = self.model(
                input_ids=self._next[:, None],
                attention_mask=self._mask,
                position_ids=self._positions[:, None],
                cache=self._cache,
                use_cache=True,
            )
        self._positions = self._positions + 1
        self._next = self._sample(rows, out.logits[:, -1])
        self._emit(rows, self._next)

    def _drop_ended(self) -> None:
        """Remove ended and cancelled rows, and the padding columns no remaining row needs."""
        for request in self._rows:
            if request.cancelled and not request.ended:
                request.finish()
        keep = [i for i, r in enumerate(self._rows) if not r.ended]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            return
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask, self._positions, self._next = (
            self._mask[index],
            self._positions[index],
            self._next[index],
        )
        start = int(self._mask.any(0).nonzero()[0])  # first column some row still attends to
        if start and self._joinable:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._mask = self._mask[:, start:]

    def _sample(self, rows: list[Request], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token under its own settings, as HF generate's processors would pick it."""
        logits = logits.float()
        for i, request in enumerate(rows):
            config = request.config
            if config.repetition_penalty != 1.0:
                seen = torch.tensor(request.prompt + request.generated, device=logits.device)
                scores = logits[i, seen]
                logits[i, seen] = torch.where(
                    scores < 0,
                    scores * config.repetition_penalty,
                    scores / config.repetition_penalty,
                )
            if len(request.generated) < config.min_new_tokens:
                logits[i, list(self.eos)] = float("-inf")
        tokens = logits.argmax(-1)
        for i, request in enumerate(rows):
            if request.generator is not None:
                tokens[i] = _sample_row(logits[i], request.config, request.generator)
        return tokens

    def _emit(self, rows: list[Request], tokens: torch.Tensor) -> None:
        """Hand each row its new token, and end the rows that are complete."""
        now = time.perf_counter()
        for request, token in zip(rows, tokens.tolist(), strict=True):
            request.add(token, now)
            if (
                token in self.eos
                or len(request.generated) >= request.config.max_new_tokens
                or self._hit_stop(request)
            ):
                request.finish()

    def _hit_stop(self, request: Request) -> bool:
        if not request.stops:
            return False
        tail = self.tokenizer.decode(
            request.generated[-request.stop_window :], skip_special_tokens=True
        )
        return any(stop in tail for stop in request.stops)


def _sample_row(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> int:
    """One token drawn from ``logits`` (V,) after temperature, top-k and top-p, in HF's order."""
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = torch.sort(logits)
        remove = ordered.softmax(-1).cumsum(-1) <= 1 - config.top_p
        remove[-1] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))
