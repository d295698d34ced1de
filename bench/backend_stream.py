"""Streaming through the backend vs. in-process: time to first token and tokens/s for one model.

    .venv/bin/python -m bench.backend_stream                       # llm-zero-shot on movielens-100k
    .venv/bin/python -m bench.backend_stream --model popularity --repeats 3 --out bench/stream.json
    .venv/bin/python -m bench.backend_stream --set base_url=http://gpu-host:8000/v1 --set llm=NAME

For each prompt, each path runs ``--repeats`` times after one warm-up; the table shows medians.
"direct" iterates ``model.stream()`` in this process; "backend" starts the HTTP backend in a
thread (`start_in_thread`, the same code path as the demo without --backend) and reads the SSE
stream with `BackendClient.stream`. Tokens are the Reply's ``completion_tokens`` when the model
counts them, else the number of text deltas.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from backend.client import BackendClient
from backend.data import load_dataset
from backend.registry import create_model
from backend.server import ModelSpec, ServerConfig, model_overrides, start_in_thread
from backend.types import Dialogue, Reply, Turn

log = logging.getLogger("bench.backend_stream")

PROMPTS = [
    "I loved The Matrix (1999). Any similar science fiction?",
    "Recommend a funny movie for a family night.",
    "I want a dark crime thriller like Heat (1995), nothing too long.",
]


def measure(parts: Iterable[str | Reply]) -> dict[str, float]:
    """Consume one stream: time to first delta, decode rate after it, total time, tokens."""
    start = time.perf_counter()
    first = last = None
    deltas = 0
    reply: Reply | None = None
    for part in parts:
        now = time.perf_counter()
        if isinstance(part, Reply):
            reply = part
        else:
            deltas += 1
            first = first if first is not None else now
            last = now
    end = time.perf_counter()
    if reply is None:
        raise RuntimeError("the stream ended without a Reply")
    tokens = reply.completion_tokens or deltas
    ttft = (first if first is not None else end) - start
    # Decode rate over the tokens after the first (the first one's cost is the TTFT).
    decode = (
        (tokens - 1) / (last - first) if first is not None and last > first and tokens > 1 else 0.0
    )
    return {"ttft_s": ttft, "tokens_per_s": decode, "total_s": end - start, "tokens": float(tokens)}


def median_of(run: Callable[[], Iterable[str | Reply]], repeats: int) -> dict[str, float]:
    """One warm-up stream, then the median of each figure over ``repeats`` streams."""
    measure(run())
    runs = [measure(run()) for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE model config overrides; values are JSON when they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'prompt':<8} {'path':<8} {'TTFT ms':>9} {'tok/s':>10} {'total ms':>9} {'tokens':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['prompt']:<8} {row['path']:<8} {row['ttft_s'] * 1000:>9.1f} {row['tokens_per_s']:>10.1f} "
            f"{row['total_s'] * 1000:>9.1f} {row['tokens']:>7.0f}"
        )
    for path in ("direct", "backend"):
        mine = [r for r in rows if r["path"] == path]
        print(
            f"median over prompts, {path}: TTFT {statistics.median(r['ttft_s'] for r in mine) * 1000:.1f} ms, "
            f"{statistics.median(r['tokens_per_s'] for r in mine):.1f} tok/s"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, and write ``--out`` JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llm-zero-shot", help="A registered model name.")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="Config override KEY=VALUE."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed streams per prompt and path.")
    parser.add_argument("--out", type=Path, default=None, help="Write the figures here as JSON.")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the table

    dataset = load_dataset(args.dataset, args.data_dir)
    spec = ModelSpec(name=args.model, config=parse_sets(args.sets))
    dialogues = [
        Dialogue(id=f"bench-{i}", turns=[Turn(role="user", text=p)]) for i, p in enumerate(PROMPTS)
    ]
    rows: list[dict[str, Any]] = []

    log.info("direct: building %s", args.model)
    model = create_model(args.model, dataset, model_overrides(spec, args.device))
    for i, dialogue in enumerate(dialogues):
        figures = median_of(lambda d=dialogue, m=model: m.stream(d), args.repeats)
        rows.append({"prompt": f"p{i}", "path": "direct", **figures})
    # Free the in-process copy before the backend loads its own (an LLM may not fit twice).
    del model
    gc.collect()

    log.info("backend: starting it in a thread")
    config = ServerConfig(
        dataset=args.dataset, data_dir=args.data_dir, device=args.device, models=[spec]
    )
    base_url, stop = start_in_thread(config, dataset=dataset)
    try:
        with BackendClient(base_url) as client:
            status = client.models()[0]
            if status.status != "ready":
                raise SystemExit(f"{args.model} failed to load in the backend: {status.error}")
            for i, dialogue in enumerate(dialogues):
                figures = median_of(
                    lambda d=dialogue: client.stream(spec.served_name, d), args.repeats
                )
                rows.append({"prompt": f"p{i}", "path": "backend", **figures})
    finally:
        stop()

    rows.sort(key=lambda r: (r["prompt"], r["path"] != "direct"))
    print(f"\n{args.model} on {args.dataset}, device {args.device}, median of {args.repeats}")
    print_table(rows)
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "device": args.device,
        "config": spec.config,
        "repeats": args.repeats,
        "prompts": PROMPTS,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        log.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    main()
