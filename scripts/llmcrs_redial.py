"""LLMCRS on ReDial's test split beside the paper's Tables 4/6/8 (issue 16): LLMCRS, each §6
ablation and the single experts, on the same recommending turns.

    python scripts/llmcrs_redial.py [--limit 40] [--out results/llmcrs-redial-test.json]

Every row is a `crs eval ... --rec-turns-only --ks 1,10,50` run; stop at any time and run again:
finished rows are kept and a stopped row continues from its journal. The adapters are the
ReDial detection warm start (`crs train llmcrs --dataset redial`) and its RLPF run
(`crs train llmcrs --dataset redial --stage rlpf`); the script trains neither.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backend.eval.study import crs, study_args, write_summary
from backend.settings import get_settings

EXPERTS = "retrieval,retrieval-pop,popularity"
BEST = "retrieval-pop"  # the best single expert on ReDial's dev split (docs/evaluation.md)
# name -> (the paper's row, the `--set` overrides beyond the shared ones, which adapter)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "llmcrs": ("LLMCRS", [], "rlpf"),
    "no-rl": ("w/o RL", [], "detection"),
    "no-m": ("w/o M", ["manage=false"], "rlpf"),
    "no-e": ("w/o E", ["use_experts=false"], "rlpf"),
    "no-si": ("w/o SI", ["schema=false"], "rlpf"),
    "no-di": ("w/o DI", ["demos=0"], "rlpf"),
    "no-sg": ("w/o SG", ["summary=false"], "rlpf"),
}
SINGLE = ("retrieval", "retrieval-pop", "popularity")
# The paper's figures (GoRecDial, LLMCRS with Flan-T5; Tables 4, 6 and 8); w/o M/E/RL are in
# its Figures 3-4 only, without numbers.
PAPER = {
    "LLMCRS": {
        "hit@1": 0.0612, "hit@10": 0.3022, "hit@50": 0.5714, "mrr@10": 0.1253,
        "mrr@50": 0.1501, "ndcg@10": 0.1723, "ndcg@50": 0.2286, "bleu-1": 0.0528,
        "bleu-2": 0.0050, "distinct-1": 0.1659, "distinct-2": 0.2944,
    },
    "w/o SI": {"hit@10": 0.2963, "mrr@10": 0.1228, "ndcg@10": 0.1674, "bleu-1": 0.0412, "distinct-1": 0.1588},
    "w/o DI": {"hit@10": 0.3003, "mrr@10": 0.1236, "ndcg@10": 0.1692, "bleu-1": 0.0474, "distinct-1": 0.1602},
    "w/o SG": {"hit@10": 0.2992, "mrr@10": 0.1235, "ndcg@10": 0.1691, "bleu-1": 0.0460, "distinct-1": 0.1591},
    "best single expert (TG-ReDial)": {
        "hit@1": 0.0519, "hit@10": 0.2853, "hit@50": 0.5496, "mrr@10": 0.1138,
        "mrr@50": 0.1267, "ndcg@10": 0.1539, "ndcg@50": 0.2129,
    },
}  # fmt: skip
COLUMNS = ("recall@1", "recall@10", "recall@50", "mrr@10", "mrr@50", "ndcg@10", "ndcg@50",
           "bleu-1", "bleu-2", "distinct-1", "distinct-2")  # fmt: skip


def main(limit: int, out: Path) -> None:
    """Evaluate every row on the recommending turns of the first ``limit`` test dialogues and
    write the summary JSON to ``out``."""
    settings = get_settings()
    adapters = {
        "detection": settings.checkpoints / "llmcrs" / "redial",
        "rlpf": settings.checkpoints / "llmcrs" / "redial-rlpf",
    }
    runs = settings.CRS_HOME / "runs" / "llmcrs-redial"
    runs.mkdir(parents=True, exist_ok=True)
    jobs = [(name, "llmcrs", row, sets, adapters[a]) for name, (row, sets, a) in VARIANTS.items()]
    jobs += [(name, name, f"single expert: {name}", [], None) for name in SINGLE]
    rows = []
    for name, model, row, overrides, adapter in jobs:
        sets = list(overrides)
        if adapter is not None:
            if not (adapter / "adapter_config.json").is_file():
                sys.exit(f"no adapter at {adapter}: train it first (see this script's docstring)")
            sets += [f"adapter={adapter}", f"experts={EXPERTS}", f"single_expert={BEST}"]
        metrics_file = runs / f"{name}.json"
        if not metrics_file.is_file():
            crs("eval", model, "--dataset", "redial", "--split", "test",
              "--limit", str(limit), "--rec-turns-only", "--ks", "1,10,50", "--batch-size", "4",
              *[arg for s in sets for arg in ("--set", s)], "--out", str(metrics_file))  # fmt: skip
        result = json.loads(metrics_file.read_text())
        metrics = result["metrics"]
        rows.append(
            {
                "row": row,
                "variant": name,
                "set": sets,
                **{k: round(metrics[k], 4) for k in COLUMNS},
                "turns": result["n"],
                "seconds": round(result["seconds"], 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "dataset": "redial",
        "split": "test",
        "limit_dialogues": limit,
        "turns": "recommending turns only (LLM-REDIAL §4.2); HIT@k = recall@k per gold item",
        "experts": EXPERTS,
        "rows": rows,
        "paper_gorecdial_flan_t5": PAPER,
    }
    write_summary(out, summary)


if __name__ == "__main__":
    args = study_args(__doc__, limit=40, out="results/llmcrs-redial-test.json")
    main(args.limit, args.out)
