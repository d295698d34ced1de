"""The LLM runtime against the real SmolLM2 on CPU, its OpenAI-compatible server, and a tiny model.

SmolLM2 is loaded once per session (converting the bundled GGUF into the session's temporary
CRS_HOME takes ~20 s); generations are kept short so the file runs in about a minute on 2 cores.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from backend.encoder import get_encoder
from backend.llm import (
    GenerationConfig,
    LLMUnavailableError,
    LocalLLM,
    _StopFilter,
    best_device,
    cut_at_stop,
    get_llm,
)
from backend.llm_remote import OpenAILLM
from backend.openai_server import create_app

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MOVIE = [
    {"role": "system", "content": "You recommend movies in one sentence."},
    {"role": "user", "content": "I loved Alien (1979). What should I watch next?"},
]
SHORT = GenerationConfig(max_new_tokens=16)


@pytest.fixture(scope="session")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> LocalLLM:
    """SmolLM2 on CPU, converted into the same temporary CRS_HOME that conftest gives each test."""
    with pytest.MonkeyPatch.context() as mp:
        # Session fixtures run before the autouse per-test CRS_HOME is set; use the same folder.
        mp.setenv("CRS_HOME", str(tmp_path_factory.getbasetemp() / "crs-home"))
        return LocalLLM("smollm2", device="cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(smollm: LocalLLM) -> Iterator[str]:
    """``create_app(smollm)`` under uvicorn on a free local port, in a background thread."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(smollm), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def remote(server_url: str, smollm: LocalLLM) -> OpenAILLM:
    return OpenAILLM(model=smollm.name, base_url=server_url, max_retries=0)


# --- pure helpers ---------------------------------------------------------------------------


def test_cut_at_stop_picks_the_stop_completed_first():
    assert cut_at_stop("hello world", ["wor", "lo"]) == 3
    assert cut_at_stop("abcd", ["abcd", "bc"]) == 1  # "bc" ends first, as generation would stop
    assert cut_at_stop("abc", ["x", ""]) is None
    assert cut_at_stop("abc", None) is None


def test_stop_filter_never_emits_a_stop_split_across_deltas():
    stop_filter = _StopFilter(["END"])
    emitted = []
    for delta in ["one E", "N", "D two"]:
        text, stopped = stop_filter.push(delta)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "one " and stopped


def test_best_device():
    assert best_device("cpu") == torch.device("cpu")
    assert best_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="not a torch device"):
        best_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            best_device("cuda")


# --- SmolLM2, local --------------------------------------------------------------------------


def test_chat_returns_text_and_usage(smollm: LocalLLM):
    text = smollm.chat(QUESTION, SHORT)
    assert text.strip()
    usage = smollm.last_usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= SHORT.max_new_tokens
    assert 0 < usage.first_token_seconds < usage.seconds


def test_greedy_is_deterministic(smollm: LocalLLM):
    assert smollm.chat(MOVIE, SHORT) == smollm.chat(MOVIE, SHORT)


def test_sampling_follows_the_seed(smollm: LocalLLM):
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=50, seed=7)
    assert smollm.chat(MOVIE, config) == smollm.chat(MOVIE, config)


def test_stream_joins_to_chat(smollm: LocalLLM):
    deltas = list(smollm.stream(MOVIE, SHORT))
    assert len(deltas) > 1
    assert "".join(deltas) == smollm.chat(MOVIE, SHORT)


def test_stream_closed_early_releases_the_model(smollm: LocalLLM):
    deltas = smollm.stream(MOVIE, GenerationConfig(max_new_tokens=64))
    next(deltas)
    deltas.close()  # cancels generation and frees the lock
    assert smollm.chat(QUESTION, GenerationConfig(max_new_tokens=4))


def test_stop_strings_cut_the_output(smollm: LocalLLM):
    full = smollm.chat(MOVIE, SHORT)
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    config = GenerationConfig(max_new_tokens=SHORT.max_new_tokens, stop=[stop])
    cut = smollm.chat(MOVIE, config)
    assert cut == full[: full.index(stop)]
    # Generation stopped early rather than running to max_new_tokens.
    assert smollm.last_usage.completion_tokens < SHORT.max_new_tokens
    assert "".join(smollm.stream(MOVIE, config)) == cut


def test_complete_continues_raw_text(smollm: LocalLLM):
    text = smollm.complete("The capital of France is", GenerationConfig(max_new_tokens=4))
    assert "Paris" in text


def test_score_prefers_the_likely_continuation(smollm: LocalLLM):
    prompt = "The capital of France is"
    likely, unlikely = smollm.score(prompt, " Paris"), smollm.score(prompt, " banana")
    assert likely > unlikely
    assert likely < 0
    tokens = smollm.token_logprobs(prompt, " Paris and Lyon")
    assert [t.token for t in tokens] == [" Paris", " and", " Lyon"]
    assert smollm.score(prompt, " Paris and Lyon") == pytest.approx(sum(t.logprob for t in tokens))


def test_scoring_options_reads_the_prompt_once_and_scores_as_one_by_one(smollm: LocalLLM):
    prompt = "Q: Which sub-task?\nA:"
    options = [" Recommendation", " User Preference Elicitation", " Explanation", " Item Detail"]
    together = smollm.score_options(prompt, options)
    assert together == pytest.approx([smollm.score(prompt, o) for o in options], abs=1e-3)
    # Options that share their first tokens are scored right too.
    shared = [" Paris", " Paris and Lyon"]
    assert smollm.score_options("The capital of France is", shared) == pytest.approx(
        [smollm.score("The capital of France is", o) for o in shared], abs=1e-3
    )


def test_text_logprobs_offsets_and_alternatives(smollm: LocalLLM):
    text = "The capital of France is Paris"
    tokens = smollm.text_logprobs(text, top=3)
    assert tokens[0].logprob is None and tokens[0].offset == 0
    assert all(t.logprob is not None and len(t.top) == 3 for t in tokens[1:])
    assert [t.offset for t in tokens] == sorted(t.offset for t in tokens)
    assert text[tokens[-1].offset :] == " Paris"
    # The chosen token's logprob is never above the best alternative's.
    assert all(t.logprob <= max(t.top.values()) + 1e-5 for t in tokens[1:])


def test_embed_is_normalised(smollm: LocalLLM):
    vectors = smollm.embed(["a movie about aliens", "a film about extraterrestrials", "tax law"])
    assert vectors.shape == (3, smollm.model.config.hidden_size) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Padding does not change a text's vector.
    np.testing.assert_allclose(smollm.embed(["tax law"])[0], vectors[2], atol=1e-5)
    with pytest.raises(ValueError, match="index 1"):
        smollm.embed(["ok", ""])


def test_chat_batch_equals_single_chats(smollm: LocalLLM):
    # Left padding with an attention mask leaves greedy outputs unchanged here; fp32 on CPU
    # keeps the padded and unpadded logits within rounding of each other.
    batch = smollm.chat_batch([QUESTION, MOVIE], SHORT)
    assert batch == [smollm.chat(QUESTION, SHORT), smollm.chat(MOVIE, SHORT)]
    assert smollm.chat_batch([], SHORT) == []


def test_chat_batch_continues_from_prefixes(smollm: LocalLLM):
    prefix = "How about Heat (1995)?"
    with_prefix, plain = smollm.chat_batch([MOVIE, MOVIE], SHORT, prefixes=[prefix, ""])
    assert with_prefix.startswith(prefix) and len(with_prefix) > len(prefix)
    assert plain == smollm.chat(MOVIE, SHORT)
    with pytest.raises(ValueError, match="one each"):
        smollm.chat_batch([MOVIE], SHORT, prefixes=["a", "b"])


def test_concurrent_callers_do_not_interleave(smollm: LocalLLM):
    expected = smollm.chat(QUESTION, SHORT)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(smollm.chat(QUESTION, SHORT)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected, expected]


def test_count_tokens_and_bad_messages(smollm: LocalLLM):
    assert smollm.count_tokens("The capital of France") == 4
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        smollm.chat([{"role": "user"}])


# --- OpenAI-compatible path -------------------------------------------------------------------


def test_remote_chat_and_stream_match_local(smollm: LocalLLM, remote: OpenAILLM):
    local = smollm.chat(MOVIE, SHORT)
    assert remote.chat(MOVIE, SHORT) == local
    assert remote.last_usage.completion_tokens > 0 and remote.last_usage.prompt_tokens > 10
    assert "".join(remote.stream(MOVIE, SHORT)) == local
    assert remote.last_usage.completion_tokens > 0 and remote.last_usage.first_token_seconds
    stopped = GenerationConfig(max_new_tokens=16, stop=["France"])
    assert remote.chat(QUESTION, stopped) == smollm.chat(QUESTION, stopped)
    assert remote.chat_batch([QUESTION, MOVIE], SHORT) == smollm.chat_batch(
        [QUESTION, MOVIE], SHORT
    )
    # A chat API cannot continue a partial reply: the prefix is asked for, and put in front.
    assert remote.chat_batch([MOVIE], SHORT, prefixes=["Sure!"])[0].startswith("Sure!")


def test_remote_score_complete_embed_match_local(smollm: LocalLLM, remote: OpenAILLM):
    prompt = "The capital of France is"
    for continuation in (" Paris", " banana split"):
        assert remote.score(prompt, continuation) == pytest.approx(
            smollm.score(prompt, continuation), abs=1e-4
        )
    config = GenerationConfig(max_new_tokens=6)
    assert remote.complete(prompt, config) == smollm.complete(prompt, config)
    texts = ["a movie about aliens", "tax law"]
    np.testing.assert_allclose(remote.embed(texts), smollm.embed(texts), atol=1e-5)
    assert remote.count_tokens("The capital of France") == smollm.count_tokens(
        "The capital of France"
    )


def test_server_speaks_openai_wire_format(server_url: str, smollm: LocalLLM):
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.get("/models").json()["data"][0]["id"] == smollm.name

        events = []
        body = {
            "messages": QUESTION,
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with http.stream("POST", "/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [
                line.removeprefix("data: ")
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]
        assert events[-1] == "[DONE]"
        assert '"usage"' in events[-2]

        scored = http.post(
            "/completions",
            json={"prompt": "Hi there", "max_tokens": 0, "echo": True, "logprobs": 1},
        ).json()
        logprobs = scored["choices"][0]["logprobs"]
        assert scored["choices"][0]["text"] == "Hi there"
        assert logprobs["text_offset"][0] == 0 and logprobs["token_logprobs"][0] is None
        assert (
            len(logprobs["tokens"])
            == len(logprobs["token_logprobs"])
            == len(logprobs["text_offset"])
        )

        encoded = http.post(
            "/embeddings", json={"input": ["hi"], "encoding_format": "base64"}
        ).json()
        vector = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vector, smollm.embed(["hi"])[0], atol=1e-5)


def test_server_errors_are_openai_shaped(server_url: str):
    with httpx.Client(base_url=server_url, timeout=30) as http:
        bad = http.post("/chat/completions", json={"messages": []})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        wrong = http.post("/chat/completions", json={"model": "gpt-9", "messages": QUESTION})
        assert wrong.status_code == 404 and "gpt-9" in wrong.json()["error"]["message"]
        nothing = http.post("/completions", json={"prompt": "x", "max_tokens": 0})
        assert nothing.status_code == 400 and "echo" in nothing.json()["error"]["message"]


def test_unreachable_endpoint_says_what_to_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens once the probe socket is closed
    llm = OpenAILLM(model="smollm2", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(LLMUnavailableError, match="CRS_LLM_BASE_URL") as err:
        llm.chat(QUESTION)
    assert url in str(err.value)
    with pytest.raises(LLMUnavailableError):
        list(llm.stream(QUESTION))


def test_get_llm_caches_and_routes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CRS_LLM_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CRS_LLM", "some-served-model")
    remote = get_llm()
    assert isinstance(remote, OpenAILLM) and remote is get_llm()
    assert remote.name == "some-served-model" and remote.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="adapter"):
        get_llm(adapter="/some/adapter")
    with pytest.raises(ValueError, match="CRS_LLM"):
        get_llm("/no/such/model", base_url="")


# --- any HF directory, and PEFT adapters -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, smollm: LocalLLM) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved as a HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=len(smollm.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=smollm.tokenizer.bos_token_id,
        eos_token_id=smollm.tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm.tokenizer.save_pretrained(folder)
    return folder


def test_any_hf_directory_loads(tiny_dir: Path):
    tiny = LocalLLM(tiny_dir, device="cpu")
    assert tiny.name == tiny_dir.name
    forced = GenerationConfig(max_new_tokens=5, min_new_tokens=5)
    assert tiny.chat(QUESTION, forced) == tiny.chat(QUESTION, forced)
    assert tiny.last_usage.completion_tokens == 5
    assert tiny.embed(["hello"]).shape == (1, 32)


def test_lora_adapter_changes_outputs(tiny_dir: Path, tmp_path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = LocalLLM(tiny_dir, device="cpu")
    torch.manual_seed(1)
    # init_lora_weights=False: non-zero B, so the adapter is not the identity.
    lora = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), lora).save_pretrained(
        tmp_path / "adapter"
    )

    adapted = LocalLLM(tiny_dir, adapter=tmp_path / "adapter", device="cpu")
    assert adapted.name == f"{tiny_dir.name}+adapter"
    prompt = "The capital of France is"
    assert adapted.score(prompt, " Paris") != pytest.approx(base.score(prompt, " Paris"), abs=1e-4)
    assert not np.allclose(adapted.embed([prompt]), base.embed([prompt]), atol=1e-4)
    with pytest.raises(ValueError, match="adapter_config.json"):
        LocalLLM(tiny_dir, adapter=tmp_path, device="cpu")


# --- retrieval encoder ---------------------------------------------------------------------------


def test_text_encoder():
    encoder = get_encoder("cpu")
    assert encoder is get_encoder("cpu") and encoder.dim == 384
    vectors = encoder.encode(["a movie about aliens", "a film about extraterrestrials", "tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert encoder.encode([]).shape == (0, 384)
