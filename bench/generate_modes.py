"""LLM-REDIAL generation on this machine: ``turn`` (one utterance per call) versus ``whole`` (the
paper's one prompt per dialogue), on the same planned dialogues.

    .venv/bin/python -m bench.generate_modes                 # 16 dialogues each, batch 16
    .venv/bin/python -m bench.generate_modes --n 32 --out bench/generate_modes.json

Prints, per mode, seconds per dialogue, the share of dialogues the filters keep, and the count of
every filter reason. Runs go to a temporary folder; the MovieLens-100K ratings are the source.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from backend.data import load_dataset
from backend.generate.pipeline import GenerateConfig, generate
from backend.generate.profiles import build_profiles, ratings_from_dataset
from backend.llm import get_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="dialogues per mode")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--modes", default="turn,whole")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    ds = load_dataset("movielens-100k")
    profiles = build_profiles(ratings_from_dataset(ds))
    llm = get_llm()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            config = GenerateConfig(n=args.n, batch_size=args.batch_size, mode=mode)
            start = time.perf_counter()
            stats = generate(profiles, ds.catalog, llm, config, Path(tmp) / mode)
            rows[mode] = {
                "dialogues": args.n,
                "seconds_per_dialogue": round((time.perf_counter() - start) / args.n, 1),
                "kept": stats["dialogues"],
                "kept_share": round(stats["dialogues"] / args.n, 2),
                "utterances_per_dialogue": stats["utterances_per_dialogue"],
                **{f"filtered:{k}": v for k, v in stats["filter_counts"].items()},
            }
    print(f"{'':28}" + "".join(f"{mode:>12}" for mode in rows))
    for key in next(iter(rows.values())):
        print(f"{key:28}" + "".join(f"{row[key]:>12}" for row in rows.values()))
    if args.out:
        args.out.write_text(json.dumps({"llm": llm.name, "modes": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
