"""PECRS's Table 5 ablations at this project's CPU schedule (issue 14), beside the paper's.

Each variant is the warm-start schedule of the reported ReDial checkpoint (`crs train pecrs
--dataset redial --epochs 0`) with one setting changed, then a ranking evaluation on the same test
turns. Stop it at any time and run it again: finished trainings and evaluations are kept.

    python scripts/pecrs_ablations.py [--limit 600] [--out results/pecrs-redial-ablations.json]
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.eval.study import crs, study_args, write_summary
from backend.settings import get_settings

# name -> (Table 5 row it stands for, the `--set` overrides of the variant)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("PECRS-small", []),
    "no-recall-loss": ("w/o Recall loss", ["alpha=0"]),
    "sampled-negatives": ("(paper's M = 150 sampled negatives, shared)", ["catalog_recall=false"]),
    "no-negative-sharing": (
        "w/o Neg. sharing (batch)",
        ["catalog_recall=false", "share_negatives=false"],
    ),
    "title-only": ("w/o Metadata (just title)", ["title_only=true"]),
}
# The paper's Table 5 (ReDial, PECRS-small): R@50 and the distinct top-1 items ("Unique").
PAPER = {
    "PECRS-small": {"recall@50": 40.5, "unique": 463},
    "w/o Recall loss": {"recall@50": 19.3, "unique": 21},
    "w/o Rerank loss": {"recall@50": 12.2, "unique": 87},
    "w/o Neg. sharing (batch)": {"recall@50": 39.8, "unique": 291},
    "w/o Metadata (just title)": {"recall@50": 35.8, "unique": 384},
}


def main(limit: int, out: Path) -> None:
    """Train (warm start) and evaluate every variant on the first ``limit`` test dialogues,
    then write the summary JSON to ``out``."""
    settings = get_settings()
    runs = settings.CRS_HOME / "runs" / "pecrs-ablations"
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (row, overrides) in VARIANTS.items():
        sets = [arg for o in overrides for arg in ("--set", o)]
        folder = "redial" if name == "full" else f"redial-{name}"
        checkpoint = settings.checkpoints / "pecrs" / folder
        if not (checkpoint / "metrics.json").is_file():
            crs("train", "pecrs", "--dataset", "redial", "--epochs", "0", *sets,
              "--out", str(checkpoint))  # fmt: skip
        metrics_file, predictions = runs / f"{name}.json", runs / f"{name}.jsonl"
        if not metrics_file.is_file():
            crs("eval", "pecrs", "--dataset", "redial", "--split", "test",
              "--limit", str(limit), "--rec-turns-only", "--set", "generate=false",
              "--set", f"checkpoint={checkpoint}", "--out", str(metrics_file),
              "--predictions", str(predictions))  # fmt: skip
        result = json.loads(metrics_file.read_text())["metrics"]
        trained = json.loads((checkpoint / "metrics.json").read_text())
        top1 = [
            json.loads(line)["top10"][:1] for line in predictions.read_text().splitlines() if line
        ]
        rows.append(
            {
                "variant": name,
                "table5_row": row,
                "set": overrides,
                **{k: 100 * result[k] for k in ("recall@1", "recall@10", "recall@50")},
                "unique": len({t[0] for t in top1 if t}),
                "turns": result["n_rec"],
                "dev_mean_recall": trained["best_dev"],
                "warm_start_seconds_per_epoch": trained["warm_start"].get("seconds_per_epoch"),
                "paper": PAPER.get(row),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "dataset": "redial",
        "split": "test",
        "limit_dialogues": limit,
        "schedule": "warm start only (crs train pecrs --dataset redial --epochs 0 --set ...)",
        "rows": rows,
        "paper_table5": PAPER,
    }
    write_summary(out, summary)


if __name__ == "__main__":
    args = study_args(__doc__, limit=600, out="results/pecrs-redial-ablations.json")
    main(args.limit, args.out)
