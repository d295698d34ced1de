"""The local LLM runtime on this machine: load times, time to first token, wrapper overhead.

    .venv/bin/python bench/llm_runtime.py                         # SmolLM2, 3 repeats, 128 tokens
    .venv/bin/python bench/llm_runtime.py --repeats 5 --out bench/llm_runtime.json

Every figure is the median of ``--repeats`` runs. Cold load converts the bundled GGUF into a
fresh temporary CRS_HOME each time; warm load reads the converted folder. Throughput compares
``LocalLLM.chat`` (tokenise, generate, decode) with a bare ``model.generate`` call on the same
weights and prompt, both greedy and forced to exactly ``--new-tokens`` tokens with min_new_tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from backend.llm import SMOLLM2, GenerationConfig, LocalLLM

MESSAGES = [{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]


def load(home: Path, device: str) -> tuple[LocalLLM, float]:
    """A LocalLLM of SmolLM2 with ``home`` as CRS_HOME, and the seconds it took."""
    os.environ["CRS_HOME"] = str(home)
    start = time.perf_counter()
    llm = LocalLLM(SMOLLM2, device=device)
    return llm, time.perf_counter() - start


def time_to_first_token(llm: LocalLLM) -> tuple[float, float]:
    """(seconds to the first streamed delta, seconds to the first generated token)."""
    start = time.perf_counter()
    deltas = llm.stream(MESSAGES, GenerationConfig(max_new_tokens=16))
    next(deltas)
    first_delta = time.perf_counter() - start
    for _ in deltas:  # finish, so the stream releases the model and records its usage
        pass
    return first_delta, llm.last_usage.first_token_seconds or float("nan")


def wrapper_rate(llm: LocalLLM, new_tokens: int) -> float:
    """Tokens/s of LocalLLM.chat, timed from the caller's side."""
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    start = time.perf_counter()
    llm.chat(MESSAGES, config)
    seconds = time.perf_counter() - start
    if llm.last_usage.completion_tokens != new_tokens:
        raise RuntimeError(
            f"chat generated {llm.last_usage.completion_tokens} tokens, not {new_tokens}"
        )
    return new_tokens / seconds


def plain_rate(llm: LocalLLM, new_tokens: int) -> float:
    """Tokens/s of a bare model.generate on the same weights and prompt (tokenising not timed)."""
    inputs = llm.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(llm.device)
    with torch.inference_mode():
        start = time.perf_counter()
        out = llm.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=llm.tokenizer.pad_token_id,
        )
        seconds = time.perf_counter() - start
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    if generated != new_tokens:
        raise RuntimeError(f"generate produced {generated} tokens, not {new_tokens}")
    return new_tokens / seconds


def measure_loads(
    home_root: Path, repeats: int, device: str, raw: dict[str, list[float]], steps: tqdm
) -> LocalLLM:
    """Cold then warm load, ``repeats`` times; returns the last warm-loaded model."""
    llm = None
    for i in range(repeats):
        del llm
        gc.collect()  # free the previous copy before timing the next load
        home = home_root / f"home-{i}"  # a fresh CRS_HOME: nothing converted yet
        cold, seconds = load(home, device)
        raw["cold_load_s"].append(seconds)
        del cold
        gc.collect()
        llm, seconds = load(home, device)
        raw["warm_load_s"].append(seconds)
        steps.update()
    return llm


def run(repeats: int, new_tokens: int, device: str) -> dict[str, Any]:
    """All measurements, as medians plus the raw runs."""
    names = (
        "cold_load_s",
        "warm_load_s",
        "ttft_stream_s",
        "ttft_generate_s",
        "wrapper_tok_s",
        "plain_tok_s",
        "wrapper_over_plain",
    )
    raw: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()[0]
    steps = tqdm(total=repeats * 3, desc="llm runtime", unit="step", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="crs-bench-") as tmp:
        llm = measure_loads(Path(tmp), repeats, device, raw, steps)
        llm.chat(MESSAGES, GenerationConfig(max_new_tokens=8))  # warm-up: first calls allocate
        for _ in range(repeats):
            first_delta, first_token = time_to_first_token(llm)
            raw["ttft_stream_s"].append(first_delta)
            raw["ttft_generate_s"].append(first_token)
            steps.update()
        for i in range(repeats):
            # Back to back, alternating which goes first, so drift and other load hit both alike.
            if i % 2 == 0:
                wrapper, plain = wrapper_rate(llm, new_tokens), plain_rate(llm, new_tokens)
            else:
                plain, wrapper = plain_rate(llm, new_tokens), wrapper_rate(llm, new_tokens)
            raw["wrapper_tok_s"].append(wrapper)
            raw["plain_tok_s"].append(plain)
            raw["wrapper_over_plain"].append(wrapper / plain)
            steps.update()
    steps.close()
    medians = {k: statistics.median(v) for k, v in raw.items()}
    return {
        "model": SMOLLM2,
        "device": str(llm.device),
        "dtype": str(llm.dtype),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # Other processes skew every figure; the 1-minute load average shows how busy the CPU was.
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "median": medians,
        "runs": raw,
    }


def report(result: dict[str, Any]) -> str:
    """The medians as a small table."""
    m, la = result["median"], result["load_average"]
    return "\n".join(
        [
            f"SmolLM2-135M-Instruct on {result['device']} ({result['dtype']}, {result['torch_threads']} threads), "
            f"median of {result['repeats']}",
            f"  load, cold (GGUF -> converted folder): {m['cold_load_s']:6.2f} s",
            f"  load, warm (converted folder):         {m['warm_load_s']:6.2f} s",
            f"  time to first streamed delta:          {m['ttft_stream_s'] * 1000:6.0f} ms",
            f"  time to first generated token:         {m['ttft_generate_s'] * 1000:6.0f} ms",
            f"  LocalLLM.chat, {result['new_tokens']} tokens greedy:      {m['wrapper_tok_s']:6.1f} tok/s",
            f"  plain model.generate, same:            {m['plain_tok_s']:6.1f} tok/s",
            f"  wrapper / plain (median of pairs):     {m['wrapper_over_plain']:6.3f} (target >= 0.9)",
            f"  load average before / after:           {la['before']:.2f} / {la['after']:.2f}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; medians are reported"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="tokens generated per throughput run"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    hf_logging.disable_progress_bar()  # one progress bar (ours), not one per GGUF conversion
    result = run(args.repeats, args.new_tokens, args.device)
    print(report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
