"""An OpenAI-compatible HTTP API over any ``LLM``: chat, legacy completions, embeddings, models.

It lets other machines use a local model (``crs llm serve``) and lets ``OpenAILLM`` be tested
against a real server. Completions with ``echo`` and ``logprobs`` follow the legacy OpenAI
format that vLLM also uses, which is what ``OpenAILLM.score`` reads.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from backend.llm import LLM, GenerationConfig, LLMUnavailableError, Usage

log = logging.getLogger(__name__)

# OpenAI leaves chat max_tokens unbounded; this caps a forgotten one on a CPU server.
DEFAULT_CHAT_MAX_TOKENS = 512


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {...}}`` body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by chat and completions; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, description="vLLM extension; 0 or -1 turns it off")
    repetition_penalty: float = Field(1.0, gt=0.0)
    min_tokens: int = Field(0, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per prompt is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None

    def generation(self, max_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_tokens,
            min_new_tokens=self.min_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            stop=[self.stop] if isinstance(self.stop, str) else self.stop,
            seed=self.seed or 0,
            repetition_penalty=self.repetition_penalty,
        )


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=0, description="0 with echo=true scores the prompt only")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finish_reason(usage: Usage, config: GenerationConfig) -> str:
    return "length" if usage.completion_tokens >= config.max_new_tokens else "stop"


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """The first validation error as "field: problem", and the field's name."""
    first = err.errors()[0] if err.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'request body'}: {first.get('msg', 'invalid request')}", param


def create_app(llm: LLM, model_name: str | None = None) -> FastAPI:
    """A FastAPI app serving ``llm`` as ``model_name`` (default ``llm.name``) under /v1."""
    served = model_name or llm.name
    app = FastAPI(
        title=f"CRS Arena LLM ({served})", description="OpenAI-compatible API over a CRS Arena LLM."
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return APIError(400, message, param=param).response()

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, err: ValueError) -> JSONResponse:
        return APIError(400, str(err)).response()

    @app.exception_handler(LLMUnavailableError)
    async def _unavailable(request: Request, err: LLMUnavailableError) -> JSONResponse:
        return APIError(503, str(err), type_="service_unavailable").response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the server logs the traceback.
        return APIError(500, f"{type(err).__name__}: {err}", type_="internal_error").response()

    def check_model(name: str | None) -> None:
        if name and name != served:
            raise APIError(
                404,
                f"The model {name!r} does not exist here; this server serves {served!r}.",
                param="model",
                code="model_not_found",
            )

    def envelope(kind: str, prefix: str) -> dict[str, Any]:
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": served,
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "crs-arena",
                }
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(req: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        check_model(req.model)
        messages = [m.as_dict() for m in req.messages]
        config = req.generation(
            req.max_completion_tokens or req.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        )
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                chat_chunks(messages, config, include_usage), media_type="text/event-stream"
            )
        text = llm.chat(messages, config)
        usage = llm.last_usage  # per thread, so this call's even under concurrent requests
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": _finish_reason(usage, config),
        }
        return {
            **envelope("chat.completion", "chatcmpl"),
            "choices": [choice],
            "usage": _usage(usage.prompt_tokens, usage.completion_tokens),
        }

    def chat_chunks(
        messages: list[dict[str, str]], config: GenerationConfig, include_usage: bool
    ) -> Iterator[str]:
        """SSE events: a role delta, content deltas, the finish reason, optionally usage, [DONE]."""
        head = envelope("chat.completion.chunk", "chatcmpl")

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            return _sse(
                {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )

        try:
            yield chunk({"role": "assistant", "content": ""})
            # closing(): a client that disconnects closes the stream, which cancels generation.
            with closing(llm.stream(messages, config)) as deltas:
                for delta in deltas:
                    yield chunk({"content": delta})
            usage = llm.last_usage  # set by the stream's end, in this same thread
            yield chunk({}, _finish_reason(usage, config))
            if include_usage:
                yield _sse(
                    {
                        **head,
                        "choices": [],
                        "usage": _usage(usage.prompt_tokens, usage.completion_tokens),
                    }
                )
        except Exception as err:  # headers are sent: report in-band, as vLLM does
            log.exception("chat stream failed")
            status = 400 if isinstance(err, ValueError) else 500
            kind = "invalid_request_error" if status == 400 else "internal_error"
            yield _sse({"error": {"message": str(err), "type": kind, "code": status}})
        yield _sse("[DONE]")

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> dict[str, Any]:
        check_model(req.model)
        if req.stream:
            raise APIError(
                400,
                "stream=true is not supported on /v1/completions; use /v1/chat/completions",
                param="stream",
            )
        if req.max_tokens == 0 and not req.echo:
            raise APIError(
                400,
                "max_tokens=0 only makes sense with echo=true (to score the prompt)",
                param="max_tokens",
            )
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        config = req.generation(req.max_tokens)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            if req.max_tokens > 0:
                text = llm.complete(prompt, config)
                usage = llm.last_usage
            else:
                text, usage = "", Usage(prompt_tokens=llm.count_tokens(prompt))
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            choice: dict[str, Any] = {
                "index": index,
                "text": prompt + text if req.echo else text,
                "logprobs": None,
                "finish_reason": _finish_reason(usage, config),
            }
            if req.logprobs is not None:
                choice["logprobs"] = legacy_logprobs(prompt, text, req.logprobs, req.echo)
            choices.append(choice)
        return {
            **envelope("text_completion", "cmpl"),
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def legacy_logprobs(prompt: str, text: str, top: int, echo: bool) -> dict[str, Any]:
        """Legacy-format logprobs over prompt + text (the prompt's tokens only with echo).

        The completion is re-tokenised from its text, which almost always gives the generated tokens.
        """
        tokens = llm.text_logprobs(prompt + text, top=top)
        if not echo:
            tokens = [t for t in tokens if t.offset >= len(prompt)]
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens] if top > 0 else None,
            "text_offset": [t.offset for t in tokens],
        }

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        check_model(req.model)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise APIError(
                400, "input is empty; pass a string or a non-empty list of strings", param="input"
            )
        vectors = llm.embed(texts).astype(np.float32)
        tokens = llm.last_usage.prompt_tokens
        if req.encoding_format == "base64":
            rows: list[Any] = [
                base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors
            ]
        else:
            rows = vectors.tolist()
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        return {
            "object": "list",
            "data": data,
            "model": served,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app
