"""LatentCRS beside the paper's Tables 2-6 (issue 17), on MovieLens-100K's held-out view.

    python scripts/latentcrs_study.py [--limit 0] [--simulate 50] [--out results/latentcrs-study.json]

- **One turn** (Tables 2, 3, 5): every row is `crs eval M --dataset movielens-100k-heldout
  --split test --history --ks 5,20` on the test users' one-sentence descriptions (written by the
  LLM simulator, never naming the target). The baselines, LatentCRS's variants and encoders, the
  hard filter's controls (the filter in front of popularity or SASRec instead of the intents) and
  Table 5's ablations.
- **Multi-turn** (Table 4): `crs simulate` with the LLM user simulator on ``--simulate`` users
  of MovieLens-100K (the same targets as the test split), S@3, S@5 and AT.
- **Tokens** (Table 6): the LLM tokens each variant reads and writes per request.

Missing checkpoints are trained first (`crs train latentcrs --skip-existing`); every run keeps a
journal, so a stopped study continues with the same command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.eval.study import crs, write_summary
from backend.settings import get_settings

# name -> (the table row, the model, its --set overrides, the training --set it needs or None)
ONE_TURN: dict[str, tuple[str, str, list[str], list[str] | None]] = {
    "popularity": ("Popularity", "popularity", [], None),
    "sasrec": ("SASRec alone (behaviour)", "sasrec", [], None),
    "retrieval": ("MiniLM retrieval alone (text)", "retrieval", [], None),
    "text-only": ("LatentCRS_B, no history (text)", "latentcrs", ["variant=B", "use_history=false"], []),
    "B-minilm": ("LatentCRS_B (MiniLM)", "latentcrs", ["variant=B"], []),
    "B-smollm2": ("LatentCRS_B (SmolLM2)", "latentcrs", ["variant=B", "text_encoder=smollm2"], ["text_encoder=smollm2"]),
    "F-rules": ("LatentCRS_F (rules only)", "latentcrs", ["variant=F", "extract=rules"], []),
    "filter-popularity": ("control: hard filter (rules) + popularity", "latentcrs", ["variant=F", "extract=rules", "ranker=popularity"], []),
    "filter-sasrec": ("control: hard filter (rules) + SASRec", "latentcrs", ["variant=F", "extract=rules", "ranker=sasrec"], []),
    "no-inference": ("w/o Inference Model", "latentcrs", ["variant=B", "ablation=no_inference"], ["ablation=no_inference"]),
    "direct-kl": ("direct KL Align", "latentcrs", ["variant=B", "ablation=direct_kl"], ["ablation=direct_kl"]),
    "no-recloss": ("w/o Recloss", "latentcrs", ["variant=B", "ablation=no_recloss"], ["ablation=no_recloss"]),
    "no-augment": ("w/o Data Augmentation", "latentcrs", ["variant=B", "ablation=no_augment"], ["ablation=no_augment"]),
    "no-em": ("w/o EM (prior only)", "latentcrs", ["variant=B", "ablation=no_em"], ["ablation=no_em"]),
}  # fmt: skip
# Table 3's rows run on a sample (the first SAMPLE test users), as the paper runs its LLM methods:
# the LLM rows, and beside them the rows they are compared with.
SAMPLE = 200
SAMPLED: dict[str, tuple[str, str, list[str]]] = {
    "llm-zero-shot@sample": ("SmolLM2 alone (llm-zero-shot, grounded)", "llm-zero-shot", []),
    "sasrec@sample": ("SASRec alone", "sasrec", []),
    "B-minilm@sample": ("LatentCRS_B (MiniLM)", "latentcrs", ["variant=B"]),
    "F-rules@sample": ("LatentCRS_F (rules only)", "latentcrs", ["variant=F", "extract=rules"]),
    "F@sample": ("LatentCRS_F (SmolLM2 extracts, checked)", "latentcrs", ["variant=F"]),
    "V@sample": ("LatentCRS_V", "latentcrs", ["variant=V"]),
}
MULTI_TURN = ("sasrec", "B-minilm", "F", "V")  # keys of SAMPLED without "@sample"
HELDOUT_SASREC = "checkpoint={}/sasrec/movielens-100k-heldout"
# The paper's figures (ML-1M; R@5, N@5, R@20, N@20; S@3, S@5, AT; tokens in / out).
PAPER = {
    "Table 2 LatentCRS_B (ML-1M, full)": [0.1437, 0.0921, 0.3305, 0.1449],
    "Table 2 UNICORN": [0.1215, 0.0734, 0.3086, 0.1274],
    "Table 3 LatentCRS_B (ML sample)": [0.142, 0.0879, 0.340, 0.1426],
    "Table 3 LatentCRS_F": [0.180, 0.1209, 0.318, 0.1604],
    "Table 3 LatentCRS_V": [0.160, 0.1139, 0.320, 0.1582],
    "Table 3 GPT4": [0.064, 0.0421, 0.102, 0.0622],
    "Table 5 w/o Inference Model": [0.0232, 0.0147, 0.0678, 0.0271],
    "Table 5 direct KL Align": [0.0847, 0.0518, 0.2256, 0.0911],
    "Table 5 w/o Recloss": [0.0698, 0.0755, 0.2073, 0.0805],
    "Table 5 w/o Data Argument": [0.1211, 0.0769, 0.3005, 0.1275],
    "Table 4 LatentCRS_B": [0.388, 0.482, 3.760],
    "Table 4 LatentCRS_F": [0.472, 0.562, 3.424],
    "Table 4 LatentCRS_V": [0.532, 0.650, 3.298],
    "Table 4 GPT4": [0.246, 0.602, 3.472],
    "Table 6 LatentCRS_B": [85.50, 1.00],
    "Table 6 LatentCRS_F": [317.50, 35.59],
    "Table 6 LatentCRS_V": [810.26, 98.63],
}  # fmt: skip
METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")


def _sets(items: list[str]) -> list[str]:
    return [arg for s in items for arg in ("--set", s)]


def _eval(runs: Path, name: str, model: str, sets: list[str], limit: int) -> dict:
    out = runs / f"{name}.json"
    if model == "sasrec":
        sets = [HELDOUT_SASREC.format(get_settings().checkpoints)]
    if not out.is_file():
        crs("eval", model, "--dataset", "movielens-100k-heldout", "--split", "test",
            "--history", "--ks", "5,20", "--limit", str(limit), *_sets(sets),
            "--out", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    return {"name": name, "n": result["n"], **{k: result["metrics"][k] for k in METRICS}}


def one_turn(runs: Path, limit: int) -> list[dict]:
    """Every user of the test split (Tables 2 and 5), then the sample (Table 3)."""
    rows = []
    for name, (row, model, sets, training) in ONE_TURN.items():
        if training is not None:
            crs("train", "latentcrs", "--skip-existing", *_sets(training))
        rows.append({**_eval(runs, name, model, sets, limit or 100000), "row": row})
    for name, (row, model, sets) in SAMPLED.items():
        rows.append({**_eval(runs, name, model, sets, min(SAMPLE, limit or SAMPLE)), "row": row})
    return rows


def tokens(names: list[str], n: int) -> list[dict]:
    """Mean LLM tokens read and written per one-turn request (Table 6), on the first ``n``
    test users."""
    from backend.data import load_dataset
    from backend.registry import create_model

    dataset = load_dataset("movielens-100k-heldout")
    dialogues = dataset.split("test")[:n]
    histories = [dataset.extra["context_histories"]["test"][d.user_id] for d in dialogues]
    out = []
    for name in names:
        row, _, sets = (
            SAMPLED[f"{name}@sample"] if f"{name}@sample" in SAMPLED else ONE_TURN[name][:3]
        )
        model = create_model("latentcrs", dataset, dict(s.split("=", 1) for s in sets))
        replies = model.respond_batch([d.prefix(1) for d in dialogues], histories)
        out.append({
            "name": name, "row": row, "n": len(replies),
            "prompt_tokens": sum(r.prompt_tokens for r in replies) / len(replies),
            "completion_tokens": sum(r.completion_tokens for r in replies) / len(replies),
        })  # fmt: skip
    return out


def multi_turn(runs: Path, n: int) -> list[dict]:
    rows = []
    for name in MULTI_TURN:
        row, model, sets = SAMPLED[f"{name}@sample"]
        if model == "sasrec":
            sets = [HELDOUT_SASREC.format(get_settings().checkpoints)]
        out = runs / f"simulate-{name}-{n}.json"
        if not out.is_file():
            crs("simulate", model, "--dataset", "movielens-100k", "--n", str(n),
                *_sets([f"{model}.{s}" for s in sets]), "--out", str(out))  # fmt: skip
        (result,) = json.loads(out.read_text())
        rows.append({"name": name, "row": row, "n": result["episodes"],
                     **{k: result[k] for k in ("S@1", "S@3", "S@5", "AT", "tokens_per_episode")}})  # fmt: skip
    return rows


def markdown(summary: dict) -> str:
    """The summary's tables as README Markdown (figures to 4 places, tokens to 1)."""
    lines = ["| row | n | R@5 | N@5 | R@20 | N@20 |", "|---|---|---|---|---|---|"]
    for r in summary["one_turn"]:
        lines.append(
            f"| {r['row']} | {r['n']} | " + " | ".join(f"{r[k]:.4f}" for k in METRICS) + " |"
        )
    lines += ["", "| row | LLM tokens in | out |", "|---|---|---|"]
    lines += [
        f"| {r['row']} | {r['prompt_tokens']:.1f} | {r['completion_tokens']:.1f} |"
        for r in summary["tokens"]
    ]
    if summary["multi_turn"]:
        lines += [
            "",
            "| row | users | S@1 | S@3 | S@5 | AT | tokens / conversation |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['row']} | {r['n']} | {r['S@1']:.2f} | {r['S@3']:.2f} | {r['S@5']:.2f} | {r['AT']:.2f} | {r['tokens_per_episode']:.0f} |"
            for r in summary["multi_turn"]
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N test users (0 = all 942)")
    parser.add_argument("--simulate", type=int, default=50, help="users simulated (0 = none)")
    parser.add_argument("--tokens", type=int, default=50, help="test users for Table 6")
    parser.add_argument("--out", type=Path, default=Path("results/latentcrs-study.json"))
    parser.add_argument(
        "--only-simulate", action="store_true", help="just the multi-turn runs (to run beside)"
    )
    args = parser.parse_args()
    runs = get_settings().CRS_HOME / "runs" / "latentcrs-study"
    runs.mkdir(parents=True, exist_ok=True)
    if args.only_simulate:
        multi_turn(runs, args.simulate)
        return
    summary = {
        "dataset": "movielens-100k-heldout (test split, one turn)",
        "one_turn": one_turn(runs, args.limit),
        "tokens": tokens(["B-minilm", "B-smollm2", "F-rules", "F", "V"], args.tokens),
        "sample": f"the first {SAMPLE} test users",
        "multi_turn": multi_turn(runs, args.simulate) if args.simulate else [],
        "paper": PAPER,
    }
    write_summary(args.out, summary)
    print(markdown(summary))


if __name__ == "__main__":
    main()
