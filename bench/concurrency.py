"""Concurrent chats with the local LLM: one chat alone, N at once, and plain ``generate`` beside them.

    .venv/bin/python -m bench.concurrency                # 8 chats x 64 tokens, 3 repeats, LLM layer
    .venv/bin/python -m bench.concurrency --http         # also through the HTTP backend
    .venv/bin/python -m bench.concurrency --chats 4 --new-tokens 32 --repeats 5

The core figures call the LLM layer directly: each chat is a thread iterating
``LocalLLM.stream`` (the continuous batcher puts concurrent chats into one batch). Every chat is
greedy and forced to exactly ``--new-tokens`` tokens (min_new_tokens), so every path does the same
work. "Plain generate" is a bare ``model.generate`` on the same weights: one prompt, then all N
prompts left-padded in one call. Tokens/s of a chat count from its start to its last token, time
to first token (TTFT) included. Every figure is the median over ``--repeats`` runs after a warm-up.
All torch work runs in worker threads (see `in_thread`).
``--http`` starts the backend in this process (`start_in_thread`, a config of just llm-zero-shot,
grounding=free)
and streams N chats through `BackendClient.stream`; that model decides its own prompts and length,
so its figures count the tokens its Replies report.

Writes ``$CRS_HOME/bench/concurrency.json`` (or ``--out``) and prints a line for the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from backend.llm import SMOLLM2, GenerationConfig, LocalLLM, Messages
from backend.settings import get_settings

log = logging.getLogger("bench.concurrency")
T = TypeVar("T")

SYSTEM = (
    "You are a friendly movie recommender chatting with a user. Reply in two or three short "
    "sentences and recommend specific movies, writing each title with its year."
)
REQUESTS = [
    "I loved Alien (1979) and The Thing (1982). I want something just as tense for tonight, "
    "ideally with a small cast stuck in one place. What should I watch?",
    "My partner and I want a funny movie for Friday night. We liked Groundhog Day and Toy Story, "
    "but nothing too silly, please.",
    "I'm in the mood for a slow, beautiful film about growing up. Something like Boyhood or "
    "Lady Bird. Any ideas?",
    "Can you recommend a heist movie? I enjoyed Heat (1995) and Ocean's Eleven. I prefer clever "
    "plans over big explosions.",
    "I want to show my kids (8 and 11) a classic adventure film this weekend. They loved "
    "Jurassic Park. What would you pick?",
    "I've seen every Christopher Nolan film. Which mind-bending movies by other directors should "
    "I try next?",
    "Recommend a romantic comedy from the nineties. I liked When Harry Met Sally and Notting Hill, "
    "but I'd like something I probably haven't seen.",
    "I need a documentary about food or cooking that isn't a competition show. Something "
    "thoughtful, under two hours.",
]


def chats(n: int) -> list[Messages]:
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": REQUESTS[i % 8]}]
        for i in range(n)
    ]


def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run in a short-lived thread.

    Every torch call of this bench runs off the main thread, as in the server: libgomp keeps a
    team of threads for each thread that ran a parallel op, and while an idle team exists (say,
    the main thread's after loading the model) every parallel op elsewhere spins less and waits
    longer; on 2 cores that cost batched decoding about 20% here. A team goes when its thread ends.
    """
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("the benchmark thread failed; see the traceback above")
    return out[0]


def plain_generate(llm: LocalLLM, conversations: list[Messages], new_tokens: int) -> float:
    """Seconds for one bare ``model.generate`` over the left-padded conversations (in a thread)."""
    return in_thread(lambda: _generate(llm, conversations, new_tokens))


def _generate(llm: LocalLLM, conversations: list[Messages], new_tokens: int) -> float:
    batch = llm.tokenizer.pad(
        {"input_ids": [llm._chat_ids(m) for m in conversations]},
        padding_side="left",
        return_tensors="pt",
    ).to(llm.device)
    start = time.perf_counter()
    llm.model.generate(
        **batch,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=llm.tokenizer.pad_token_id,
    )
    return time.perf_counter() - start


def decode_step_ms(llm: LocalLLM, rows: int, prompt_tokens: int = 100, steps: int = 15) -> float:
    """Median ms of one decode step for ``rows`` rows over a ``prompt_tokens``-token cache."""

    def run() -> float:
        times = []
        with torch.inference_mode():
            ids = torch.randint(0, 1000, (rows, prompt_tokens), device=llm.device)
            cache = llm.model(input_ids=ids, use_cache=True).past_key_values
            nxt = ids[:, -1:]
            for _ in range(steps):
                start = time.perf_counter()
                llm.model(input_ids=nxt, cache=cache, use_cache=True)
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    return in_thread(run)


def concurrently(n: int, chat: Callable[[int], tuple[float | None, int]]) -> dict[str, Any]:
    """Run ``chat(i)`` (returning its first-token time and token count) in ``n`` threads at once."""
    barrier = threading.Barrier(n + 1)
    results: list[tuple[float | None, float, int] | None] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            first, tokens = chat(i)
            results[i] = (first, time.perf_counter(), tokens)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    end = max(r[1] for r in done)
    tokens = sum(r[2] for r in done)
    ttfts = [(r[0] if r[0] is not None else r[1]) - start for r in done]
    return {
        "aggregate_tokens_per_s": tokens / (end - start),
        "per_stream_tokens_per_s": statistics.median(r[2] / (r[1] - start) for r in done),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": max(ttfts),
        "tokens": tokens,
        "seconds": end - start,
    }


def llm_chat(llm: LocalLLM, conversations: list[Messages], config: GenerationConfig):
    """``chat(i)`` for `concurrently`: stream conversation i through ``LocalLLM.stream``."""

    def chat(i: int) -> tuple[float | None, int]:
        first = None
        for _ in llm.stream(conversations[i], config):
            first = first or time.perf_counter()
        return first, llm.last_usage.completion_tokens

    return chat


def median_runs(run: Callable[[], dict[str, Any]], repeats: int) -> dict[str, Any]:
    """One warm-up, then the median of every figure over ``repeats`` runs."""
    run()
    runs = [run() for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def bench_llm(llm: LocalLLM, n: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    conversations = chats(n)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    chat = llm_chat(llm, conversations, config)
    log.info("plain generate, 1 prompt and %d prompts", n)
    generate_1 = median_runs(
        lambda: {"tokens_per_s": new_tokens / plain_generate(llm, conversations[:1], new_tokens)},
        repeats,
    )
    generate_n = median_runs(
        lambda: {"tokens_per_s": n * new_tokens / plain_generate(llm, conversations, new_tokens)},
        repeats,
    )
    log.info("LocalLLM.stream, 1 chat and %d chats", n)
    one = median_runs(lambda: concurrently(1, chat), repeats)
    many = median_runs(lambda: concurrently(n, chat), repeats)
    return {
        "generate_1_tokens_per_s": generate_1["tokens_per_s"],
        "generate_n_tokens_per_s": generate_n["tokens_per_s"],
        "one_chat": one,
        "n_chats": many,
        "speedup": many["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"],
        "generate_speedup": generate_n["tokens_per_s"] / generate_1["tokens_per_s"],
        "one_chat_vs_generate": one["per_stream_tokens_per_s"] / generate_1["tokens_per_s"],
    }


def bench_http(n: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """The same chats through the HTTP backend, served by llm-zero-shot."""
    from backend.client import BackendClient
    from backend.registry import model_class
    from backend.server import ModelSpec, ServerConfig, start_in_thread
    from backend.types import Dialogue, Reply, Turn

    config: dict[str, Any] = {"max_new_tokens": new_tokens}
    fields = {f.name for f in dataclasses.fields(model_class("llm-zero-shot").config_class)}
    if "grounding" in fields:
        config["grounding"] = "free"  # a plain streamed chat, not retrieval plus scoring
    spec = ModelSpec(name="llm-zero-shot", config=config)
    base_url, stop = start_in_thread(ServerConfig(device="cpu", models=[spec]))
    dialogues = [
        Dialogue(id=f"bench-{i}", turns=[Turn(role="user", text=REQUESTS[i % 8])]) for i in range(n)
    ]

    def chat(i: int) -> tuple[float | None, int]:
        first, tokens = None, 0
        with BackendClient(base_url) as client:
            for part in client.stream(spec.served_name, dialogues[i]):
                if isinstance(part, Reply):
                    tokens = part.completion_tokens or 0
                else:
                    first = first or time.perf_counter()
        return first, tokens

    try:
        with BackendClient(base_url) as client:
            status = client.models()[0]
        if status.status != "ready":
            raise SystemExit(f"llm-zero-shot failed to load in the backend: {status.error}")
        one = median_runs(lambda: concurrently(1, chat), repeats)
        many = median_runs(lambda: concurrently(n, chat), repeats)
    finally:
        stop()
    return {
        "one_chat": one,
        "n_chats": many,
        "speedup": many["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"],
    }


def report(result: dict[str, Any]) -> None:
    n, core = result["chats"], result["llm"]
    one, many = core["one_chat"], core["n_chats"]
    print(
        f"\n{result['model']} on {result['device']} ({result['torch_threads']} torch threads), "
        f"{n} chats x {result['new_tokens']} new tokens, greedy, forced length, median of "
        f"{result['repeats']}; load average before: {result['load_average']}"
    )
    print("source: the LLM layer (threads iterating LocalLLM.stream), not HTTP")
    print(f"plain generate, 1 prompt:        {core['generate_1_tokens_per_s']:7.1f} tok/s")
    print(
        f"plain generate, {n} prompts:       {core['generate_n_tokens_per_s']:7.1f} tok/s "
        f"({core['generate_speedup']:.1f}x one)"
    )
    print(
        f"1 chat:   {one['per_stream_tokens_per_s']:7.1f} tok/s per stream "
        f"({core['one_chat_vs_generate']:.2f}x plain generate), TTFT {one['ttft_p50_s'] * 1000:.0f} ms"
    )
    print(
        f"{n} chats:  {many['aggregate_tokens_per_s']:7.1f} tok/s aggregate "
        f"({core['speedup']:.1f}x one chat), {many['per_stream_tokens_per_s']:.1f} tok/s per stream, "
        f"TTFT p50 {many['ttft_p50_s'] * 1000:.0f} ms, max {many['ttft_max_s'] * 1000:.0f} ms"
    )
    print(
        f"goals: {n} chats >= 5x one: {core['speedup'] >= 5}; TTFT p50 < 2 s: "
        f"{many['ttft_p50_s'] < 2}; one chat >= 0.9x generate: {core['one_chat_vs_generate'] >= 0.9}"
    )
    step = result["decode_step_ms"]
    print(
        f"one decode step: {step['1']:.1f} ms for 1 row, {step[str(n)]:.1f} ms for {n} rows: "
        f"{n} chats can reach at most {step['ceiling']:.1f}x one chat, prefill not counted"
    )
    if http := result.get("http"):
        h1, hn = http["one_chat"], http["n_chats"]
        print(
            f"HTTP backend (llm-zero-shot, tokens as its Replies count them): 1 chat "
            f"{h1['aggregate_tokens_per_s']:.1f} tok/s, TTFT {h1['ttft_p50_s'] * 1000:.0f} ms; "
            f"{n} chats {hn['aggregate_tokens_per_s']:.1f} tok/s aggregate ({http['speedup']:.1f}x), "
            f"TTFT p50 {hn['ttft_p50_s'] * 1000:.0f} ms"
        )
    print(
        f"\nREADME: | {result['model']}, {result['device']}, {n} concurrent chats x "
        f"{result['new_tokens']} tokens | 1 chat {one['per_stream_tokens_per_s']:.1f} tok/s "
        f"({core['one_chat_vs_generate']:.2f}x plain generate) | {n} chats "
        f"{many['aggregate_tokens_per_s']:.1f} tok/s aggregate ({core['speedup']:.1f}x; plain batched "
        f"generate {core['generate_speedup']:.1f}x) | TTFT p50 {many['ttft_p50_s']:.2f} s |"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures and the README line, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=8, help="Concurrent chats.")
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens each chat generates.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per figure.")
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--http", action="store_true", help="Also stream through the backend.")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default under CRS_HOME)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)

    load_average = [round(x, 2) for x in os.getloadavg()]
    llm = in_thread(lambda: LocalLLM(SMOLLM2, device=args.device))
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct",
        "device": str(llm.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load_average,
        "chats": args.chats,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "window_s": llm.batcher.config.window_s,
        "source": "LLM layer (LocalLLM.stream in threads)",
        "llm": bench_llm(llm, args.chats, args.new_tokens, args.repeats),
    }
    # The hardware's bound on the speed-up: N rows' step against N single-row steps.
    steps = {str(k): decode_step_ms(llm, k) for k in (1, args.chats)}
    steps["ceiling"] = args.chats * steps["1"] / steps[str(args.chats)]
    result["decode_step_ms"] = steps
    if args.http:
        result["http"] = bench_http(args.chats, args.new_tokens, args.repeats)
    report(result)
    out = args.out or get_settings().CRS_HOME / "bench" / "concurrency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
