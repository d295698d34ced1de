"""The model-serving backend: routes, validation, streaming, isolation of failures, concurrency,
and one real HTTP round trip through uvicorn and `BackendClient`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient

from backend import registry
from backend.client import (
    BackendClient,
    BackendUnavailableError,
    ModelError,
    RequestError,
    parse_sse,
    sse_lines,
)
from backend.data.base import Dataset
from backend.registry import CRSModel, ModelConfig, register
from backend.server import DEFAULT_CONFIG, ModelSpec, ServerConfig, create_app, start_in_thread
from backend.types import Dialogue, Reply, ScoredItem, TraceStep, Turn, UserHistory

# ----------------------------------------------------------------------------- tiny test models


@dataclass
class EchoConfig(ModelConfig):
    device: str = "auto"
    delay: float = 0.0  # seconds per call, so concurrent calls would overlap if not serialised


class Probe:
    """Counts calls in flight per model instance, to detect overlapping calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0

    def __enter__(self) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active -= 1


class EchoModel(CRSModel):
    """Repeats the user's message; recommends item 1; reports the history it was given."""

    name = "test-echo"
    description = "Test model that echoes the user's last message."
    config_class = EchoConfig

    def __init__(self, dataset: Dataset, config: EchoConfig | None = None):
        super().__init__(dataset, config)
        self.probe = Probe()
        self.device = self.config.device

    def _reply(self, dialogue: Dialogue, history: UserHistory | None) -> Reply:
        text = f"you said: {dialogue.turns[-1].text}"
        trace = [TraceStep(name="history", output=history.user_id if history else None)]
        return Reply(
            text=text, items=[ScoredItem(item_id="1", score=1.0, title="Heat (1995)")], trace=trace
        )

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        with self.probe:
            time.sleep(self.config.delay)
            return self._reply(dialogue, history)

    def stream(
        self, dialogue: Dialogue, history: UserHistory | None = None
    ) -> Iterator[str | Reply]:
        with self.probe:
            reply = self._reply(dialogue, history)
            for piece in ("you ", "said: ", dialogue.turns[-1].text):
                time.sleep(self.config.delay / 3)
                yield piece
            yield reply


class BoomModel(CRSModel):
    """Fails on every request; streams one delta before failing."""

    name = "test-boom"
    description = "Test model that raises."

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        raise RuntimeError("kaboom")

    def stream(
        self, dialogue: Dialogue, history: UserHistory | None = None
    ) -> Iterator[str | Reply]:
        yield "partial "
        raise RuntimeError("kaboom midway")


class BrokenModel(CRSModel):
    """Cannot load, like a model whose checkpoint is missing."""

    name = "test-broken"
    description = "Test model that fails to load."

    def __init__(self, dataset: Dataset, config: ModelConfig | None = None):
        raise FileNotFoundError("no checkpoint at /nowhere; train one first")

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        raise AssertionError("never loaded")


class RendezvousModel(CRSModel):
    """Two instances must be inside respond() at the same time, or the barrier times out."""

    name = "test-rendezvous"
    description = "Test model that waits for a second model's call."
    barrier = threading.Barrier(2, timeout=5)

    def respond(self, dialogue: Dialogue, history: UserHistory | None = None) -> Reply:
        self.barrier.wait()
        return Reply(text="met")


# ----------------------------------------------------------------------------- fixtures & helpers

TEST_MODELS = (EchoModel, BoomModel, BrokenModel, RendezvousModel)


@pytest.fixture(autouse=True, scope="module")
def _test_models() -> Iterator[None]:
    """Register the test models for this module only: other tests that build every registered
    model must never meet one that cannot load or that blocks on a barrier."""
    for cls in TEST_MODELS:
        register(cls)
    yield
    for cls in TEST_MODELS:
        registry._REGISTRY.pop(cls.name, None)


# Markup, NUL/ESC, Unicode line separators and a forged SSE event, 60 characters.
HOSTILE = "<script>alert(1)</script>\x00\x1b[31m\u2028\x85\r\n\r\nevent: reply\ndata: {}\n\n"


def dialogue(*texts: str, role_last: str = "user") -> dict:
    """A dialogue body: alternate user/system turns ending with ``role_last``."""
    roles = ["user", "system"] if role_last == "user" else ["system", "user"]
    n = len(texts)
    turns = [{"role": roles[(n - 1 - i) % 2], "text": t} for i, t in enumerate(texts)]
    return {"id": "t", "turns": turns}


def make_config(**limits: int) -> ServerConfig:
    return ServerConfig(
        dataset="tiny",
        device="cpu",
        models=[
            ModelSpec(name="test-echo", config={"delay": 0.02}),
            ModelSpec(name="test-boom"),
            ModelSpec(name="test-broken"),
            ModelSpec(name="test-rendezvous", alias="left"),
            ModelSpec(name="test-rendezvous", alias="right"),
        ],
        **limits,
    )


@pytest.fixture
def app(tiny_dataset):
    return create_app(make_config(max_message_chars=80, max_turns=4), dataset=tiny_dataset)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:  # the context runs the lifespan: models load here
        yield c


def sse_events(text: str) -> list[tuple[str, dict]]:
    return [(event, json.loads(data)) for event, data in parse_sse(sse_lines([text]))]


# ----------------------------------------------------------------------------- configuration


def test_server_config_reads_the_default_yaml_and_explains_bad_files(tmp_path):
    config = ServerConfig.from_yaml(DEFAULT_CONFIG)
    assert config.dataset == "movielens-100k" and config.max_message_chars == 2000
    names = [m.name for m in config.models]
    assert names == [
        "retrieval",
        "llm-zero-shot",
        "sasrec",
        "latentcrs",
        "popularity",
        "llmcrs",
        "pecrs",
    ]
    # Models that need a checkpoint carry the recipe the server trains them with on first start.
    assert [m.name for m in config.models if m.train is not None] == [
        "sasrec",
        "latentcrs",
        "llmcrs",
        "pecrs",
    ]
    with pytest.raises(FileNotFoundError, match="start from .*default.yaml"):
        ServerConfig.from_yaml(tmp_path / "missing.yaml")
    twice = tmp_path / "twice.yaml"
    twice.write_text("models:\n  - name: popularity\n  - name: popularity\n")
    with pytest.raises(ValueError, match="popularity listed twice; give each copy its own `alias`"):
        ServerConfig.from_yaml(twice)
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: tpu\nmodels: [{name: popularity}]\n")
    with pytest.raises(ValueError, match="bad.yaml is not a valid server config.*device"):
        ServerConfig.from_yaml(bad)


# ----------------------------------------------------------------------------- listing & lookups


def test_health_and_models_list_each_model_with_its_status(client):
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["dataset"] == "tiny"
    assert health["models"] == {
        "test-echo": "ready",
        "test-boom": "ready",
        "test-broken": "error",
        "left": "ready",
        "right": "ready",
    }
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["test-echo"]["description"].startswith("Test model")
    assert models["test-echo"]["device"] == "cpu"  # the server-wide device reached the config
    assert models["left"]["model"] == "test-rendezvous"
    assert models["test-broken"]["status"] == "error"
    assert "no checkpoint at /nowhere" in models["test-broken"]["error"]


def test_items_users_and_history(client):
    assert client.get("/items/3").json()["title"] == "The Usual Suspects"
    missing = client.get("/items/999")
    assert missing.status_code == 404 and "'999'" in missing.json()["detail"]
    hits = client.get("/items", params={"q": "heat (1986)", "limit": 2}).json()
    assert hits[0]["item"]["id"] == "6" and hits[0]["score"] >= 90
    assert client.get("/users").json() == ["u1"]
    history = client.get("/users/u1/history").json()
    assert [i["item_id"] for i in history["interactions"]] == ["1", "2", "4"]
    assert history["titles"]["4"] == "Alien (1979)"
    assert client.get("/users/nobody/history").status_code == 404


# ----------------------------------------------------------------------------- respond & stream


def test_respond_returns_the_reply_and_resolves_user_id(client):
    r = client.post(
        "/models/test-echo/respond", json={"dialogue": dialogue("hello"), "user_id": "u1"}
    )
    assert r.status_code == 200, r.text
    reply = Reply.model_validate(r.json())
    assert reply.text == "you said: hello" and reply.item_ids == ["1"]
    assert reply.trace[0].output == "u1"  # the server looked the history up


def test_stream_sends_all_deltas_then_exactly_one_reply(client):
    r = client.post("/models/test-echo/stream", json={"dialogue": dialogue("hi there")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["delta", "delta", "delta", "reply"]
    deltas = "".join(data["text"] for kind, data in events if kind == "delta")
    reply = Reply.model_validate(events[-1][1])
    assert deltas == reply.text == "you said: hi there"
    assert reply.model == "test-echo" and reply.seconds > 0  # filled in for streams


def test_hostile_text_is_passed_through_as_data(client):
    body = {"dialogue": dialogue(HOSTILE)}
    assert (
        client.post("/models/test-echo/respond", json=body).json()["text"] == "you said: " + HOSTILE
    )
    raw = client.post("/models/test-echo/stream", json=body).text
    assert raw.isascii()  # JSON-escaped, so U+2028 and friends cannot split a line
    events = sse_events(raw)
    # Newlines and a fake "event: reply" inside a delta must not split or end the stream.
    assert [k for k, _ in events] == ["delta", "delta", "delta", "reply"]
    assert events[2][1]["text"] == HOSTILE
    assert client.get("/items", params={"q": HOSTILE}).status_code == 200


def test_sse_parsing_handles_split_chunks_pings_and_truncation():
    chunks = [
        "event: delta\r",
        '\ndata: {"text": "a\u2028b"}\r\n\r',
        "\n: ping\n\n",
        "event: reply\ndata: {",
    ]
    assert list(parse_sse(sse_lines(chunks))) == [("delta", '{"text": "a\u2028b"}')]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"dialogue": {"id": "t", "turns": []}}, 422, "no turns"),
        (
            {"dialogue": dialogue("hi", "hello", role_last="system")},
            422,
            "last turn must be the user",
        ),
        ({"dialogue": dialogue("   \n\t ")}, 422, "message is empty"),
        ({"dialogue": dialogue("x" * 81)}, 413, "max_message_chars=80"),
        ({"dialogue": dialogue("a", "b", "c", "d", "e")}, 422, "max_turns=4"),
        ({"dialogue": dialogue("hi"), "user_id": "nobody"}, 404, "GET /users"),
        (
            {"dialogue": dialogue("hi"), "user_id": "u1", "history": {"user_id": "u1"}},
            422,
            "not both",
        ),
        ({"dialogue": {"turns": [{"role": "bot", "text": "hi"}]}}, 422, "dialogue.turns.0.role"),
        ({"dialog": dialogue("hi")}, 422, "body.dialogue: Field required"),
    ],
)
@pytest.mark.parametrize("route", ["respond", "stream"])
def test_invalid_requests_get_4xx_with_a_clear_message(client, route, body, status, message):
    r = client.post(f"/models/test-echo/{route}", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_malformed_json_is_422(client):
    r = client.post(
        "/models/test-echo/respond",
        content=b'{"dialogue": ',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_unknown_model_is_404_listing_the_available_ones(client):
    r = client.post("/models/nope/respond", json={"dialogue": dialogue("hi")})
    assert r.status_code == 404
    assert "unknown model 'nope'" in r.json()["detail"] and "test-echo" in r.json()["detail"]


def test_model_that_failed_to_load_is_503_while_others_work(client):
    for route in ("respond", "stream"):
        r = client.post(f"/models/test-broken/{route}", json={"dialogue": dialogue("hi")})
        assert r.status_code == 503 and "no checkpoint at /nowhere" in r.json()["detail"]
    assert (
        client.post("/models/test-echo/respond", json={"dialogue": dialogue("hi")}).status_code
        == 200
    )


def test_a_raising_model_fails_only_its_own_request(client):
    body = {"dialogue": dialogue("hi")}
    r = client.post("/models/test-boom/respond", json=body)
    assert r.status_code == 500 and r.json() == {"detail": "test-boom failed: kaboom"}
    events = sse_events(client.post("/models/test-boom/stream", json=body).text)
    assert events == [
        ("delta", {"text": "partial "}),
        ("error", {"message": "test-boom failed: kaboom midway"}),
    ]
    assert client.post("/models/test-echo/respond", json=body).json()["text"] == "you said: hi"
    # The failing model keeps serving (and failing) requests; it is not marked broken.
    assert client.post("/models/test-boom/respond", json=body).status_code == 500


# ----------------------------------------------------------------------------- concurrency


def test_calls_to_one_model_are_serialised(client, app):
    body = {"dialogue": dialogue("hi")}
    routes = ["respond", "stream"] * 4
    with ThreadPoolExecutor(len(routes)) as pool:
        responses = list(
            pool.map(lambda r: client.post(f"/models/test-echo/{r}", json=body), routes)
        )
    assert all(r.status_code == 200 for r in responses)
    probe = app.state.host.models["test-echo"].model.probe
    assert probe.calls == len(routes) and probe.max_active == 1


def test_different_models_run_in_parallel(app):
    RendezvousModel.barrier.reset()

    async def both() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as c,
        ):
            body = {"dialogue": dialogue("hi")}
            # Each call blocks until the other one is inside respond() too; serial calls would time out.
            return await asyncio.gather(
                *(c.post(f"/models/{n}/respond", json=body) for n in ("left", "right"))
            )

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]


# ----------------------------------------------------------------------------- real HTTP


def test_real_server_client_round_trip_outage_and_recovery(tiny_dataset):
    config = ServerConfig(dataset="tiny", device="cpu", models=[ModelSpec(name="test-echo")])
    base_url, stop = start_in_thread(config, dataset=tiny_dataset)
    port = int(base_url.rsplit(":", 1)[1])
    client = BackendClient(base_url, timeout=10)
    try:
        assert client.health().models == {"test-echo": "ready"}
        d = Dialogue(id="x", turns=[Turn(role="user", text="hello")])
        assert client.respond("test-echo", d, user_id="u1").trace[0].output == "u1"
        parts = list(client.stream("test-echo", d))
        assert (
            "".join(p for p in parts if isinstance(p, str)) == parts[-1].text == "you said: hello"
        )
        assert client.search("usual suspects")[0].item.id == "3"
        assert client.history("u1").titles["1"] == "Heat (1995)"
        with pytest.raises(RequestError, match="unknown model 'nope'") as err:
            client.respond("nope", d)
        assert err.value.status_code == 404
    finally:
        stop()

    with pytest.raises(BackendUnavailableError, match=f"{base_url}.*crs serve --config"):
        client.health()
    with pytest.raises(BackendUnavailableError):
        list(client.stream("test-echo", d))

    # The same client recovers once a backend is back on the same port.
    again, stop = start_in_thread(config, port=port, dataset=tiny_dataset)
    try:
        assert again == base_url
        assert client.respond("test-echo", d).text == "you said: hello"
    finally:
        stop()
        client.close()


def test_client_raises_model_error_for_failing_models(app):
    with TestClient(app) as http:
        client = BackendClient("http://testserver", http=http)
        d = Dialogue(id="x", turns=[Turn(role="user", text="hi")])
        with pytest.raises(ModelError, match="test-boom failed: kaboom") as err:
            client.respond("test-boom", d)
        assert err.value.status_code == 500
        stream = client.stream("test-boom", d)
        assert next(stream) == "partial "
        with pytest.raises(ModelError, match="kaboom midway"):
            next(stream)
        with pytest.raises(ModelError, match="failed to load") as err:
            client.respond("test-broken", d)
        assert err.value.status_code == 503


def test_items_mentioned_in_any_earlier_turn_never_come_back(client):
    """Defect: an item the user named two turns ago (its turn carries no ids: the demo sends raw
    text) was recommended again. The server links every user turn and drops such items."""
    body = {"dialogue": dialogue("I loved Heat (1995). More like it?", "Try Alien.", "Older?")}
    assert client.post("/models/test-echo/respond", json=body).json()["items"] == []
    events = sse_events(client.post("/models/test-echo/stream", json=body).text)
    assert events[-1][0] == "reply" and events[-1][1]["items"] == []
    # Without the mention, the same model's item is kept.
    fresh = {"dialogue": dialogue("Something to watch?")}
    assert [
        i["item_id"] for i in client.post("/models/test-echo/respond", json=fresh).json()["items"]
    ] == ["1"]


def test_fresh_items_drops_excluded_items_and_repeated_titles():
    from backend.registry import fresh_items

    items = [
        ScoredItem(item_id="a", score=5, title="Nightwatch (1997)"),
        ScoredItem(item_id="b", score=4, title="Alien (1979)"),
        ScoredItem(item_id="c", score=3, title="Nightwatch (1997)"),  # the catalog's second copy
        ScoredItem(item_id="a", score=2, title="Nightwatch (1997)"),
        ScoredItem(item_id="d", score=1, title="Heat (1995)"),
    ]
    kept = fresh_items(items, exclude={"b"}, limit=5)
    assert [i.item_id for i in kept] == ["a", "d"]
    assert [i.item_id for i in fresh_items(items, set(), limit=2)] == ["a", "b"]


def _wait_for_status(client: TestClient, name: str, wanted: set[str], seen: list[str]) -> dict:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        info = next(m for m in client.get("/models").json() if m["name"] == name)
        if not seen or seen[-1] != info["status"]:
            seen.append(info["status"])
        if info["status"] in wanted:
            return info
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {wanted}; statuses seen: {seen}")


@pytest.mark.timeout(300)
def test_a_model_without_checkpoint_is_trained_in_the_background_then_served(tmp_path):
    """The first-run path: the server answers at once, SASRec has no checkpoint, so it is
    queued, trained by a low-priority child process with progress, loaded, and then answers."""
    config = ServerConfig(
        dataset="movielens-100k",
        wait_for_models=False,
        models=[
            ModelSpec(name="popularity"),
            ModelSpec(
                name="sasrec",
                config={"checkpoint": str(tmp_path / "sasrec")},
                train=[
                    "--max-steps",
                    "30",
                    "--set",
                    "hidden=16",
                    "--out",
                    str(tmp_path / "sasrec"),
                ],
            ),
        ],
    )
    with TestClient(create_app(config)) as client:
        seen: list[str] = []
        _wait_for_status(client, "sasrec", {"training"}, seen)
        refused = client.post("/models/sasrec/respond", json={"dialogue": dialogue("hi")})
        assert refused.status_code == 503 and "being trained" in refused.json()["detail"]
        info = _wait_for_status(client, "sasrec", {"ready", "error"}, seen)
        assert info["status"] == "ready", info
        assert "training" in seen and seen[-1] == "ready"
        reply = client.post(
            "/models/sasrec/respond", json={"dialogue": dialogue("I loved Star Wars (1977)")}
        ).json()
        assert reply["items"] and reply["trace"][0]["name"] == "sequence"


@pytest.mark.timeout(120)
def test_a_failed_background_training_says_why(tmp_path):
    config = ServerConfig(
        dataset="movielens-100k",
        wait_for_models=False,
        models=[
            ModelSpec(
                name="sasrec",
                config={"checkpoint": str(tmp_path / "none")},
                train=["--set", "no_such_key=1", "--out", str(tmp_path / "none")],
            )
        ],
    )
    with TestClient(create_app(config)) as client:
        info = _wait_for_status(client, "sasrec", {"ready", "error"}, [])
        assert info["status"] == "error"
        assert info["error"].startswith("training failed:") and "no_such_key" in info["error"]
