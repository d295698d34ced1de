"""The hand-checked sample of the pre-sales silver labels (docs/datasets.md, "Pre-sales labels").

    python scripts/presales_labels.py --draw    # draw 50 ReDial test rows per task (hand = silver)
    python scripts/presales_labels.py           # agreement of silver and hand -> results/presales-labels.json

A reader then confirms or corrects each row's ``hand`` label (and says why in ``note``) in
tests/fixtures/presales/<task>.jsonl; drawing again overwrites those checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.data import load_dataset
from backend.models.presales.handcheck import FIXTURES, TASKS, agreement, draw, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", action="store_true", help="draw the sample afresh (overwrites)")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("results/presales-labels.json"))
    args = parser.parse_args()
    if args.draw:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for task, rows in draw(load_dataset("redial"), args.n).items():
            lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
            (FIXTURES / f"{task}.jsonl").write_text("".join(lines))
        print(f"drew {args.n} rows per task into {FIXTURES}")
        return
    result = {task: agreement(load(task)) for task in TASKS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
