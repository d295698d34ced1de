"""`OpenAILLM`: the LLM interface over any OpenAI-compatible endpoint (vLLM, SGLang, TGI, ``crs llm serve``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from backend.llm import (
    LLM,
    GenerationConfig,
    LLMError,
    LLMUnavailableError,
    Messages,
    TokenLogprob,
    Usage,
    check_messages,
    check_prefixes,
    normalise_rows,
)


def _ask_prefix(messages: Messages, prefix: str) -> Messages:
    if not prefix:
        return messages
    ask = f'Begin your reply with exactly these words: "{prefix}"'
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']} {ask}"}, *messages[1:]]
    return [{"role": "system", "content": ask}, *messages]


class OpenAILLM(LLM):
    """A model served behind an OpenAI-compatible API (vLLM, SGLang, TGI, ``crs llm serve``).

    ``top_k``, ``repetition_penalty`` and ``min_new_tokens`` go in the request body the way vLLM
    reads them; the OpenAI service itself ignores or rejects them, so leave them at their defaults there.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str = "EMPTY",
        timeout: float = 120.0,
        max_retries: int = 2,
    ):
        from openai import OpenAI

        super().__init__()
        self.name = model
        base_url = base_url.rstrip("/")
        # vLLM and friends serve under /v1; accept "http://host:port" as the bare URL users type.
        self.base_url = base_url + "/v1" if urlsplit(base_url).path in ("", "/") else base_url
        self.client = OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turns the client's connection and lookup errors into ones that say what to fix."""
        import openai

        try:
            yield
        except openai.APIConnectionError as err:
            raise LLMUnavailableError(
                f"cannot reach the LLM endpoint {self.base_url} ({err}). Start a server there "
                "(`crs llm serve`, vLLM, ...) or point CRS_LLM_BASE_URL at a running one; unset "
                "CRS_LLM_BASE_URL to run the model locally."
            ) from err
        except openai.AuthenticationError as err:
            raise LLMUnavailableError(
                f"the LLM endpoint {self.base_url} refused the API key ({err.message}); set CRS_LLM_API_KEY"
            ) from err
        except openai.NotFoundError as err:
            raise LLMError(
                f"the LLM endpoint {self.base_url} has no model {self.name!r} ({err.message}); set "
                f"CRS_LLM to a model listed at {self.base_url}/models"
            ) from err

    @staticmethod
    def _request(config: GenerationConfig) -> dict[str, Any]:
        if config.num_beams > 1:
            raise LLMError(
                "OpenAI-compatible chat APIs have no beam search; use a local model "
                "(unset CRS_LLM_BASE_URL) or num_beams=1"
            )
        request: dict[str, Any] = {
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
        }
        if config.stop:
            request["stop"] = config.stop
        # vLLM's names for the knobs the OpenAI schema lacks; sent only when not at their defaults.
        extra = {
            name: value
            for name, value, default in (
                ("top_k", config.top_k, 0),
                ("repetition_penalty", config.repetition_penalty, 1.0),
                ("min_tokens", config.min_new_tokens, 0),
            )
            if value != default
        }
        if extra:
            request["extra_body"] = extra
        return request

    def _chat_once(self, messages: Messages, config: GenerationConfig) -> tuple[str, Usage]:
        check_messages(messages)
        start = time.perf_counter()
        with self._errors():
            response = self.client.chat.completions.create(
                model=self.name, messages=messages, **self._request(config)
            )
        usage = response.usage
        return response.choices[0].message.content or "", Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            seconds=time.perf_counter() - start,
        )

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        config: GenerationConfig | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[str]:
        """Replies to several conversations, sent concurrently (the server batches them).

        Chat APIs cannot continue a partial reply, so a prefix is asked for in the system message
        and put in front of a reply that does not start with it.
        """
        config = config or GenerationConfig()
        if not conversations:
            return []
        prefixes = check_prefixes(conversations, prefixes)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(8, len(conversations))) as pool:
            results = list(
                pool.map(
                    lambda mp: self._chat_once(_ask_prefix(*mp), config),
                    zip(conversations, prefixes, strict=True),
                )
            )
        results = [
            (text if text.startswith(prefix) else f"{prefix} {text}".strip(), usage)
            for (text, usage), prefix in zip(results, prefixes, strict=True)
        ]
        self.last_usage = Usage(
            prompt_tokens=sum(u.prompt_tokens for _, u in results),
            completion_tokens=sum(u.completion_tokens for _, u in results),
            seconds=time.perf_counter() - start,
        )
        return [text for text, _ in results]

    def chat(self, messages: Messages, config: GenerationConfig | None = None) -> str:
        """The assistant's reply to ``messages``."""
        text, self.last_usage = self._chat_once(messages, config or GenerationConfig())
        return text

    def stream(self, messages: Messages, config: GenerationConfig | None = None) -> Iterator[str]:
        """Content deltas of a streamed chat completion."""
        check_messages(messages)
        config = config or GenerationConfig()
        start = time.perf_counter()
        usage = Usage()
        with (
            self._errors(),
            self.client.chat.completions.create(
                model=self.name,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **self._request(config),
            ) as chunks,
        ):  # closing it drops the connection, which stops the server generating
            for chunk in chunks:
                if chunk.usage:
                    usage.prompt_tokens = chunk.usage.prompt_tokens
                    usage.completion_tokens = chunk.usage.completion_tokens
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    if usage.first_token_seconds is None:
                        usage.first_token_seconds = time.perf_counter() - start
                    yield delta
        usage.seconds = time.perf_counter() - start
        self.last_usage = usage

    def complete(self, prompt: str, config: GenerationConfig | None = None) -> str:
        """The raw continuation of ``prompt`` from the legacy completions endpoint."""
        start = time.perf_counter()
        with self._errors():
            response = self.client.completions.create(
                model=self.name, prompt=prompt, **self._request(config or GenerationConfig())
            )
        usage = response.usage
        self.last_usage = Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            seconds=time.perf_counter() - start,
        )
        return response.choices[0].text

    def text_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        """Prompt logprobs via ``echo=True``; the one token generated past ``text`` is dropped."""
        start = time.perf_counter()
        with self._errors():
            # max_tokens=1 rather than 0: some vLLM versions reject 0 even with echo.
            response = self.client.completions.create(
                model=self.name,
                prompt=text,
                max_tokens=1,
                temperature=0.0,
                echo=True,
                logprobs=max(top, 1),
            )
        self.last_usage = Usage(
            prompt_tokens=response.usage.prompt_tokens if response.usage else 0,
            seconds=time.perf_counter() - start,
        )
        lp = response.choices[0].logprobs
        if lp is None or lp.tokens is None:
            raise LLMError(
                f"{self.base_url} returned no logprobs for echo=True; it must support prompt logprobs (vLLM does)"
            )
        tops = lp.top_logprobs or [None] * len(lp.tokens)
        return [
            TokenLogprob(token=tok, offset=off, logprob=logprob, top=alt if top > 0 else None)
            for tok, off, logprob, alt in zip(
                lp.tokens, lp.text_offset, lp.token_logprobs, tops, strict=True
            )
            if off < len(text)
        ]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings from the endpoint's /embeddings, re-normalised."""
        start = time.perf_counter()
        with self._errors():
            response = self.client.embeddings.create(
                model=self.name, input=texts, encoding_format="float"
            )
        self.last_usage = Usage(
            prompt_tokens=response.usage.prompt_tokens, seconds=time.perf_counter() - start
        )
        rows = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
        return normalise_rows(np.array(rows, dtype=np.float32).reshape(len(rows), -1))

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the server tokenises it (an echo request; may include its BOS)."""
        return len(self.text_logprobs(text)) if text else 0
