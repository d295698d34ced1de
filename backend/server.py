"""The model-serving backend: one FastAPI app that loads the configured CRS models once and serves them.

Every model gets its own worker threads: one, so calls run one at a time, unless the model
batches concurrent calls itself (``CRSModel.max_concurrency``); different models answer in parallel. Replies stream as
server-sent events: ``event: delta`` with ``{"text": ...}`` per text delta, then one
``event: reply`` with the full `Reply`, or one ``event: error`` with ``{"message": ...}``.

Start it with ``crs serve --config backend/configs/default.yaml``; the demo starts one in-process
with `start_in_thread` when no backend URL is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import uvicorn
import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backend.data.base import Dataset
from backend.mentions import link_user_turn
from backend.registry import CRSModel, Peers, create_model, fresh_items, model_class
from backend.settings import get_settings
from backend.training import BackgroundTrainer, TrainingJob
from backend.types import Dialogue, Item, Reply, UserHistory

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
# queued/training: no checkpoint yet, so the server trains the model in the background first.
Status = Literal["loading", "queued", "training", "ready", "error"]


# ----------------------------------------------------------------------------- configuration


def problems(errors: Sequence[Any]) -> str:
    """Pydantic validation errors as one line: ``models.0.name: Field required; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)


class ModelSpec(BaseModel):
    """One served model: a registry name, config overrides, and the name it is served under."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A registered model name (see `crs models`).")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Model config overrides, e.g. checkpoint, llm, base_url (an OpenAI-compatible endpoint).",
    )
    alias: str | None = Field(
        default=None, description="Name in URLs and the demo; lets one model run with two configs."
    )
    train: list[str] | None = Field(
        default=None,
        description="`crs train <name>` arguments: when the model has no checkpoint yet, the "
        "server trains it in the background with them and serves it once trained.",
    )

    @property
    def served_name(self) -> str:
        return self.alias or self.name


class ServerConfig(BaseModel):
    """Everything `crs serve` needs, read from one YAML file (see backend/configs/default.yaml)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        default="movielens-100k", description="Dataset whose catalog the models use."
    )
    data_dir: Path | None = Field(
        default=None, description="Dataset folder; default CRS_DATA_DIR/<dataset>."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Given to every model config that has a `device` field."
    )
    models: list[ModelSpec] = Field(min_length=1, description="The models to load and serve.")
    max_message_chars: int = Field(default=2000, ge=1, description="Longest accepted turn text.")
    max_turns: int = Field(default=60, ge=1, description="Most turns accepted in one dialogue.")
    wait_for_models: bool = Field(
        default=True,
        description="Answer HTTP only once every model has loaded; false: serve at once and "
        "list models as loading (the demo's page opens while models load).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ServerConfig:
        names = [spec.served_name for spec in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"model(s) {', '.join(twice)} listed twice; give each copy its own `alias`"
            )
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> ServerConfig:
        """Read and validate a config file; errors name the file and what to fix."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"server config {path} not found; start from {DEFAULT_CONFIG}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping with `dataset` and `models`")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ValueError(
                f"{path} is not a valid server config: {problems(err.errors())}"
            ) from None


# ----------------------------------------------------------------------------- API bodies


class RespondRequest(BaseModel):
    """Body of POST /models/{name}/respond and /stream."""

    model_config = ConfigDict(extra="forbid")

    dialogue: Dialogue
    history: UserHistory | None = None
    # The server looks the history up in the dataset; give either this or `history`.
    user_id: str | None = None


class ModelInfo(BaseModel):
    name: str  # the served name (alias or registry name), used in URLs
    model: str  # the registry name
    description: str
    device: str
    version: str
    status: Status
    error: str | None = None
    # While training: {"done", "total", "elapsed_s", "eta_s"} of the background run.
    progress: dict[str, Any] | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]  # degraded: some model failed to load
    dataset: str
    models: dict[str, Status]
    # The request limits, so that a client can check a message before sending it.
    max_message_chars: int = 2000
    max_turns: int = 60


class SearchHit(BaseModel):
    item: Item
    score: float  # rapidfuzz score, 0-100


class HistoryResponse(UserHistory):
    """A user's history plus the display title of every item in it (for the demo's sidebar)."""

    titles: dict[str, str] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- model hosting


def describe_error(err: BaseException) -> str:
    """An exception as one readable line (KeyError's str() would add quotes)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return str(message) or type(err).__name__


def model_overrides(spec: ModelSpec, device: str) -> dict[str, Any]:
    """The config overrides ``spec`` is built with: its own, plus ``device`` where the config has one."""
    overrides = dict(spec.config)
    fields = {f.name for f in dataclasses.fields(model_class(spec.name).config_class)}
    if "device" in fields:
        # The model's own `device` override wins over the server-wide one.
        overrides.setdefault("device", device)
    return overrides


@dataclass
class ServedModel:
    """A model slot: the loaded model (or its load error) and the one thread that runs it."""

    spec: ModelSpec
    model: CRSModel | None = None
    status: Status = "loading"
    error: str | None = None
    peers: Peers | None = None  # the host's other models, given to the model once loaded
    # One worker: calls queue here instead of holding threads, and never overlap.
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        try:
            workers = model_class(self.spec.name).max_concurrency
        except KeyError:
            workers = 1  # an unknown name fails in `load`, with the list of known ones
        self.executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"model-{self.name}"
        )

    @property
    def name(self) -> str:
        return self.spec.served_name

    def load(self, dataset: Dataset, device: str) -> None:
        """Build the model through the registry; a failure is recorded, never raised.

        A model with a `train` recipe whose checkpoint is missing becomes "queued" instead.
        """
        start = time.perf_counter()
        self.status, self.error = "loading", None
        try:
            self.model = create_model(self.spec.name, dataset, model_overrides(self.spec, device))
            if self.peers is not None:
                self.model.use_peers(self.peers)
            self.status = "ready"
            log.info(
                "loaded %s in %.1fs on %s", self.name, time.perf_counter() - start, self.device
            )
        except FileNotFoundError as err:
            if self.spec.train is None:
                self._failed(err)
            else:
                self.status = "queued"
                log.info("%s has no checkpoint yet (%s); it will be trained", self.name, err)
        except Exception as err:
            self._failed(err)

    def _failed(self, err: Exception) -> None:
        self.status, self.error = "error", describe_error(err)
        log.exception("model %s failed to load; serving the others", self.name)

    @property
    def device(self) -> str:
        """Where the model runs: its own device, its LLM's, a remote endpoint, or its config's."""
        if self.model is None:
            return str(self.spec.config.get("device", "")) or "-"
        llm = getattr(self.model, "llm", None)
        for found in (getattr(self.model, "device", None), getattr(llm, "device", None)):
            if found is not None:
                return str(found)
        base_url = getattr(llm, "base_url", None) or getattr(self.model.config, "base_url", None)
        if base_url:
            return f"remote {base_url}"
        return str(getattr(self.model.config, "device", "cpu"))

    def info(self, job: TrainingJob | None = None) -> ModelInfo:
        try:
            description = model_class(self.spec.name).description
        except KeyError:
            description = ""
        return ModelInfo(
            name=self.name,
            model=self.spec.name,
            description=description,
            device=self.device,
            version=str(self.model.version) if self.model else "",
            status=self.status,
            error=self.error,
            progress=job.progress if job is not None and self.status == "training" else None,
        )


@dataclass
class ModelCall:
    """A validated request: the model to run, the dialogue and the resolved user history."""

    served: ServedModel
    dialogue: Dialogue
    history: UserHistory | None

    def checked(self, reply: Reply) -> Reply:
        """``reply`` without items mentioned in earlier turns or repeated, whatever the model did."""
        items = fresh_items(reply.items, set(self.dialogue.mentioned_items()), len(reply.items))
        return reply if items == reply.items else reply.model_copy(update={"items": items})


@dataclass
class HostPeers:
    """The host's ready models as one served model sees them (itself left out)."""

    host: ModelHost
    caller: str

    def _ready(self) -> list[ServedModel]:
        return [
            s
            for s in self.host.models.values()
            if s.name != self.caller and s.status == "ready" and s.model is not None
        ]

    def ready_models(self) -> list[str]:
        return [s.spec.name for s in self._ready()]

    def respond(self, name: str, dialogue: Dialogue, history: UserHistory | None) -> Reply:
        served = next(s for s in self._ready() if s.spec.name == name)
        assert served.model is not None
        return served.executor.submit(served.model.respond, dialogue, history).result()


class ModelHost:
    """The dataset and the served models; the HTTP routes are thin adapters over it."""

    def __init__(self, config: ServerConfig, dataset: Dataset):
        self.config = config
        self.dataset = dataset
        self.models = {spec.served_name: ServedModel(spec) for spec in config.models}
        for served in self.models.values():
            served.peers = HostPeers(self, served.name)
        self.trainer = BackgroundTrainer(get_settings().CRS_HOME, on_done=self._trained)

    async def load_all(self) -> None:
        """Load every model (each on its own worker thread, the one that will run it); queue
        the training of those that need it."""
        for served in self.models.values():
            await asyncio.wrap_future(
                served.executor.submit(served.load, self.dataset, self.config.device)
            )
            if served.status == "queued":
                assert served.spec.train is not None
                self.trainer.submit(served.name, served.spec.name, served.spec.train)

    def _trained(self, job: TrainingJob) -> None:
        """A background run finished: load the model so that it becomes selectable."""
        served = self.models[job.name]
        served.executor.submit(served.load, self.dataset, self.config.device)

    def status_of(self, served: ServedModel) -> ModelInfo:
        """``served``'s info, with the state of its background training when it has one."""
        job = self.trainer.jobs.get(served.name)
        if job is not None and served.status in ("queued", "training"):
            if job.state == "failed":
                served.status, served.error = "error", job.error
            else:
                served.status = "training" if job.state == "training" else "queued"
        return served.info(job)

    def close(self) -> None:
        self.trainer.stop()
        for served in self.models.values():
            served.executor.shutdown(wait=False, cancel_futures=True)

    def ready(self, name: str) -> ServedModel:
        """The served model ``name``, or the HTTP error that says why it cannot answer."""
        served = self.models.get(name)
        if served is None:
            raise HTTPException(
                404,
                f"unknown model {name!r}; available models: {', '.join(self.models)} (GET /models)",
            )
        info = self.status_of(served)
        if info.status == "ready":
            return served
        if info.status == "error":
            why = f"it failed to load: {served.error}"
        elif info.status == "loading":
            why = "it is still loading; try again in a moment"
        else:
            why = f"it is being trained ({info.status}); it can be picked once it is ready"
        raise HTTPException(503, f"model {name!r} is not available: {why}")

    def check_request(self, body: RespondRequest) -> UserHistory | None:
        """Validate the dialogue against the limits and resolve the history; raise 4xx otherwise."""
        turns, limits = body.dialogue.turns, self.config
        if not turns:
            raise HTTPException(422, "the dialogue has no turns; send at least the user's message")
        if len(turns) > limits.max_turns:
            raise HTTPException(
                422,
                f"the dialogue has {len(turns)} turns; the limit is max_turns={limits.max_turns} "
                "(start a new dialogue)",
            )
        for index, turn in enumerate(turns):
            if len(turn.text) > limits.max_message_chars:
                raise HTTPException(
                    413,
                    f"Message too long: {limits.max_message_chars:,} characters at most "
                    f"(turn {index}, the {turn.role}'s, has {len(turn.text):,}; "
                    f"max_message_chars={limits.max_message_chars})",
                )
        if turns[-1].role != "user":
            raise HTTPException(
                422, "the last turn must be the user's message (it is the system's); append one"
            )
        if not turns[-1].text.strip():
            raise HTTPException(422, "the user's message is empty; type something to answer")
        if body.user_id is None:
            return body.history
        if body.history is not None:
            raise HTTPException(422, "give either `history` or `user_id`, not both")
        history = self.dataset.histories.get(body.user_id)
        if history is None:
            raise HTTPException(
                404,
                f"user {body.user_id!r} has no history in {self.dataset.name}; GET /users lists them",
            )
        return history


async def model_call(name: str, body: RespondRequest, request: Request) -> ModelCall:
    """Dependency of the respond/stream routes: errors become 4xx before any event is streamed."""
    host: ModelHost = request.app.state.host
    served = host.ready(name)
    history = host.check_request(body)
    # Titles the user typed, in any turn, become item ids: models leave them out as already mentioned.
    turns = [
        link_user_turn(turn, host.dataset.catalog) if turn.role == "user" else turn
        for turn in body.dialogue.turns
    ]
    return ModelCall(served, body.dialogue.model_copy(update={"turns": turns}), history)


# ----------------------------------------------------------------------------- streaming


async def _stream_events(call: ModelCall) -> AsyncIterator[ServerSentEvent]:
    """Run ``model.stream`` on the model's thread and relay its parts as SSE events."""
    served, dialogue, history = call.served, call.dialogue, call.history
    loop = asyncio.get_running_loop()
    parts: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()  # set when the client goes away: stop generating

    def emit(kind: str, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(parts.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: the server shut down, nobody listens
            stop.set()

    def produce() -> None:
        model = served.model
        assert model is not None  # `ready()` checked it
        start = time.perf_counter()
        try:
            if stop.is_set():
                return
            generator = model.stream(dialogue, history)
            try:
                for part in generator:
                    if isinstance(part, Reply):
                        # Streams are not wrapped by @timed; fill what it would have.
                        seconds = part.seconds or time.perf_counter() - start
                        emit(
                            "reply",
                            call.checked(part).model_copy(
                                update={"seconds": seconds, "model": part.model or model.name}
                            ),
                        )
                        return
                    if not isinstance(part, str):
                        raise TypeError(
                            f"stream yielded {type(part).__name__}; expected str deltas then a Reply"
                        )
                    emit("delta", part)
                    if stop.is_set():
                        return
                raise RuntimeError("stream ended without a final Reply")
            finally:
                close = getattr(generator, "close", None)
                if close is not None:
                    close()
        except Exception as err:
            log.exception("model %s failed while streaming", served.name)
            emit("error", f"{served.name} failed: {describe_error(err)}")
        finally:
            emit("end", None)

    job = served.executor.submit(produce)
    try:
        while True:
            kind, payload = await parts.get()
            if kind == "end":
                return
            if kind == "delta":
                yield ServerSentEvent(event="delta", data={"text": payload})
            elif kind == "reply":
                # A dict, not the model: FastAPI then JSON-encodes it ASCII-only, so no U+2028
                # or similar in the text can look like a line break to a client's line splitter.
                yield ServerSentEvent(event="reply", data=payload.model_dump(mode="json"))
            else:
                yield ServerSentEvent(event="error", data={"message": payload})
    finally:
        stop.set()
        job.cancel()  # only succeeds while still queued behind other requests


# ----------------------------------------------------------------------------- the app


def create_app(config: ServerConfig, dataset: Dataset | None = None) -> FastAPI:
    """The FastAPI app; models load when it starts (lifespan). ``dataset`` is injectable for tests."""
    if dataset is None:
        from backend.data import load_dataset

        dataset = load_dataset(config.dataset, config.data_dir)
    host = ModelHost(config, dataset)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.wait_for_models:
            await host.load_all()
        else:
            loading = asyncio.create_task(host.load_all())
        yield
        if not config.wait_for_models:
            loading.cancel()
        host.close()

    # The largest legitimate body: every turn at its limit, JSON-escaped, plus a long history.
    max_body = config.max_turns * config.max_message_chars * 6 + (1 << 20)
    app = FastAPI(title="CRS Arena backend", lifespan=lifespan, max_body_size=max_body)
    app.state.host = host

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={
                "detail": f"invalid request: {problems(err.errors())}",
                "errors": jsonable_encoder(err.errors()),
            },
        )

    @app.get("/health")
    def health() -> Health:
        statuses = {name: host.status_of(served).status for name, served in host.models.items()}
        ok = all(s == "ready" for s in statuses.values())
        return Health(
            status="ok" if ok else "degraded",
            dataset=dataset.name,
            models=statuses,
            max_message_chars=config.max_message_chars,
            max_turns=config.max_turns,
        )

    @app.get("/models")
    def models() -> list[ModelInfo]:
        return [host.status_of(served) for served in host.models.values()]

    @app.get("/items")
    def search_items(
        q: str = Query(
            min_length=1, max_length=200, description="A title, optionally with (year)."
        ),
        limit: int = Query(10, ge=1, le=100),
    ) -> list[SearchHit]:
        hits = dataset.catalog.search(q, limit=limit)
        return [SearchHit(item=dataset.catalog[item_id], score=score) for item_id, score in hits]

    @app.get("/items/{item_id}")
    def item(item_id: str) -> Item:
        found = dataset.catalog.get(item_id)
        if found is None:
            raise HTTPException(
                404,
                f"item {item_id!r} is not in the {dataset.name} catalog; GET /items?q=TITLE searches it",
            )
        return found

    @app.get("/users")
    def users(limit: int = Query(100, ge=1, le=100_000)) -> list[str]:
        return list(dataset.histories)[:limit]

    @app.get("/users/{user_id}/history")
    def user_history(user_id: str) -> HistoryResponse:
        history = dataset.histories.get(user_id)
        if history is None:
            raise HTTPException(
                404, f"user {user_id!r} has no history in {dataset.name}; GET /users lists them"
            )
        titles = {
            i.item_id: dataset.catalog[i.item_id].display_title
            for i in history.interactions
            if i.item_id in dataset.catalog
        }
        return HistoryResponse(**history.model_dump(), titles=titles)

    @app.post("/models/{name}/respond")
    async def respond(call: Annotated[ModelCall, Depends(model_call)]) -> Reply:
        served = call.served
        assert served.model is not None  # `ready()` checked it
        future = served.executor.submit(served.model.respond, call.dialogue, call.history)
        try:
            reply = await asyncio.wrap_future(future)
        except Exception as err:
            log.exception("model %s failed", served.name)
            raise HTTPException(500, f"{served.name} failed: {describe_error(err)}") from None
        if not isinstance(reply, Reply):
            raise HTTPException(
                500, f"{served.name} failed: respond() returned {type(reply).__name__}, not a Reply"
            )
        return call.checked(reply)

    @app.post("/models/{name}/stream", response_class=EventSourceResponse)
    async def stream(
        call: Annotated[ModelCall, Depends(model_call)],
    ) -> AsyncIterator[ServerSentEvent]:
        async for event in _stream_events(call):
            yield event

    return app


# ----------------------------------------------------------------------------- running it


def run_server(
    config_path: Path, host: str = "127.0.0.1", port: int = 8000, device: str | None = None
) -> None:
    """Serve the models in ``config_path`` until interrupted (`crs serve`); ``device`` overrides the file's."""
    config = ServerConfig.from_yaml(config_path)
    if device is not None:
        config = ServerConfig.model_validate({**config.model_dump(), "device": device})
    # A short graceful shutdown so Ctrl-C does not wait for a long generation to finish.
    uvicorn.run(create_app(config), host=host, port=port, timeout_graceful_shutdown=5)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_in_thread(
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    dataset: Dataset | None = None,
    startup_timeout: float = 600.0,
) -> tuple[str, Callable[[], None]]:
    """Run the backend in a daemon thread; return ``(base_url, stop)`` once /health answers.

    ``port=0`` picks a free port. Used by the demo when no backend URL is configured.
    """
    app = create_app(config, dataset)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    # Reuse the port at once after a stop (no TIME_WAIT delay), so a restart can take it back.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot start the backend on {host}:{port}: {err}; choose another port"
        ) from None
    base_url = _url(host, sock.getsockname()[1])
    # log_config=None keeps the host application's logging; no access log inside a demo.
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, timeout_graceful_shutdown=2, lifespan="on"
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="crs-backend", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(
                f"the in-process backend at {base_url} failed to start; see the log above"
            )
        if time.monotonic() > deadline:
            stop()
            raise TimeoutError(
                f"the in-process backend at {base_url} did not start within {startup_timeout:.0f}s"
            )
        time.sleep(0.05)
    httpx.get(f"{base_url}/health", timeout=10).raise_for_status()
    log.info("backend serving %s at %s", ", ".join(s.served_name for s in config.models), base_url)
    return base_url, stop
