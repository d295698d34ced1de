"""Continuous batching of the local LLM: rows equal their own unbatched generation, and each row
stops, ends and is accounted for on its own. Real SmolLM2 on CPU, a few short generations."""

from __future__ import annotations

import threading

import pytest
import torch

from backend.batching import detokenize
from backend.llm import GenerationConfig, LocalLLM, Messages

SYSTEM = {"role": "system", "content": "You are a movie recommender. Answer in two sentences."}
CHATS: list[Messages] = [
    [SYSTEM, {"role": "user", "content": "I loved Alien (1979). What next?"}],
    [
        SYSTEM,
        {
            "role": "user",
            "content": "My partner and I want something funny for Friday night. We liked "
            "Groundhog Day and Toy Story, but nothing too silly, and not longer than two hours.",
        },
    ],
    [SYSTEM, {"role": "user", "content": "Any sci-fi?"}],
]
GREEDY = GenerationConfig(max_new_tokens=16)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> LocalLLM:
    """SmolLM2 on CPU, converted into the same temporary CRS_HOME that conftest gives each test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRS_HOME", str(tmp_path_factory.getbasetemp() / "crs-home"))
        return LocalLLM("smollm2", device="cpu")


@pytest.fixture(scope="module")
def prompts(smollm: LocalLLM) -> list[list[int]]:
    ids = [smollm._chat_ids(chat) for chat in CHATS]
    assert len({len(p) for p in ids}) == len(ids), "the prompts should differ in length"
    return ids


def plain_generate(llm: LocalLLM, prompt: list[int], config: GenerationConfig) -> list[int]:
    """The tokens ``model.generate`` picks for ``prompt`` alone (greedy), EOS included."""
    ids = torch.tensor([prompt])
    out = llm.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        do_sample=False,
        pad_token_id=llm.tokenizer.pad_token_id,
        eos_token_id=llm._eos,
    )
    return out[0, len(prompt) :].tolist()


def test_batched_rows_equal_their_own_greedy_generation(smollm, prompts):
    requests = smollm.batcher.submit(prompts, GREEDY)
    for request in requests:
        request.wait()
    assert [r.peak_batch for r in requests] == [3, 3, 3]
    assert [r.generated for r in requests] == [plain_generate(smollm, p, GREEDY) for p in prompts]


def test_latecomers_join_a_running_batch(smollm, prompts):
    long = GenerationConfig(max_new_tokens=24)
    (first,) = smollm.batcher.submit(prompts[:1], long)
    next(first.ids())  # the first row is decoding before the others arrive
    late = smollm.batcher.submit(prompts[1:], GREEDY)
    for request in [first, *late]:
        request.wait()
    assert first.peak_batch == 3 and all(r.peak_batch >= 2 for r in late)
    assert first.generated == plain_generate(smollm, prompts[0], long)
    assert [r.generated for r in late] == [plain_generate(smollm, p, GREEDY) for p in prompts[1:]]


def test_a_lone_request_runs_alone_and_streams_like_chat(smollm):
    deltas = list(smollm.stream(CHATS[0], GREEDY))
    assert len(deltas) > 1
    assert "".join(deltas) == smollm.chat(CHATS[0], GREEDY)
    (request,) = smollm.batcher.submit([smollm._chat_ids(CHATS[0])], GREEDY)
    request.wait()
    assert request.peak_batch == 1


def test_a_cancelled_row_stops_without_stopping_the_others(smollm, prompts):
    forced = GenerationConfig(max_new_tokens=32, min_new_tokens=32)
    cancelled, other = smollm.batcher.submit(prompts[:2], forced)
    tokens = cancelled.ids()
    next(tokens), next(tokens)
    cancelled.cancel()
    cancelled.wait()
    other.wait()
    assert len(cancelled.generated) < 32 and cancelled.error is None
    assert other.generated == plain_generate(smollm, prompts[1], forced)


def test_a_stop_string_ends_its_row_early_while_others_continue(smollm, prompts):
    full = smollm.tokenizer.decode(plain_generate(smollm, prompts[0], GREEDY))
    stop = full.split()[3]
    with_stop = GenerationConfig(max_new_tokens=GREEDY.max_new_tokens, stop=[stop])
    stopped, other = smollm.batcher.submit(prompts[:2], [with_stop, GREEDY])
    stopped.wait()
    other.wait()
    assert stopped.peak_batch == other.peak_batch == 2
    assert len(stopped.generated) < len(other.generated) == GREEDY.max_new_tokens
    assert stop in smollm.tokenizer.decode(stopped.generated)
    assert other.generated == plain_generate(smollm, prompts[1], GREEDY)


def test_sampled_rows_follow_their_own_seed_in_a_batch(smollm, prompts):
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    (alone,) = smollm.batcher.submit(prompts[:1], sampled)
    alone.wait()
    row, greedy = smollm.batcher.submit(prompts[:2], [sampled, GREEDY])
    row.wait()
    greedy.wait()
    assert row.peak_batch == 2
    assert row.generated == alone.generated
    assert greedy.generated == plain_generate(smollm, prompts[1], GREEDY)


def test_usage_is_per_call_under_concurrency(smollm):
    lengths = [4, 8, 12]
    usages: dict[int, tuple[int, int, str]] = {}
    start = threading.Barrier(len(lengths))

    def chat(i: int) -> None:
        config = GenerationConfig(max_new_tokens=lengths[i], min_new_tokens=lengths[i])
        start.wait()
        text = "".join(smollm.stream(CHATS[i], config))
        usage = smollm.last_usage
        usages[i] = (usage.prompt_tokens, usage.completion_tokens, text)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(lengths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, n in enumerate(lengths):
        prompt_tokens, completion_tokens, text = usages[i]
        assert prompt_tokens == len(smollm._chat_ids(CHATS[i]))
        assert completion_tokens == n and text


def test_detokenize_joins_to_decode_across_multibyte_characters(smollm):
    ids = smollm.tokenizer("Amélie 🎬 and 千と千尋", add_special_tokens=False)["input_ids"]
    deltas = list(detokenize(smollm.tokenizer, ids))
    assert "".join(deltas) == smollm.tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
