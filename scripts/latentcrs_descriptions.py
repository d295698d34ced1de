"""Write the held-out targets' one-turn descriptions with the LLM user simulator (LatentCRS §5.1).

For each user of `movielens-100k-heldout` and each split (test first), the simulator's opening
line about the target, checked by its leak guard and act check (a draft that names the target or
is not a request is written again, then replaced by the template). Resumable: every line goes to
a journal under CRS_HOME/runs as it is written, so the same command continues a stopped run. At
the end the rows ship as ``backend/data/generated/movielens-100k-heldout/descriptions.jsonl.gz``
with a ``stats.json`` (rewrites, template fallbacks, and a leak check of every line).

    python scripts/latentcrs_descriptions.py [--splits test,valid] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from tqdm.auto import tqdm

from backend.acts import get_act_check
from backend.data import load_dataset
from backend.data.heldout import NAME, descriptions_path
from backend.journal import Journal
from backend.llm import get_llm
from backend.settings import get_settings
from backend.simulator import LLMSimulator, SimulatorConfig, leaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="test,valid")
    parser.add_argument("--limit", type=int, default=0, help="first N users per split (0 = all)")
    args = parser.parse_args()
    dataset = load_dataset(NAME)
    llm, carries = get_llm(), get_act_check().carries
    jobs = [
        (split, d)
        for split in args.splits.split(",")
        for d in dataset.split(split)[: args.limit or None]
    ]
    config = SimulatorConfig()
    journal = Journal(
        get_settings().CRS_HOME / "runs" / "latentcrs-descriptions.jsonl",
        {"llm": llm.name, "simulator": vars(config), "splits": args.splits, "limit": args.limit},
    )
    done = journal.load(lambda j, r: j < len(jobs) and r["dialogue"] == jobs[j][1].id)
    start = time.perf_counter()
    for split, dialogue in tqdm(jobs[len(done) :], initial=len(done), total=len(jobs)):
        target = dataset.catalog[dialogue.turns[1].items[0]]
        # One simulator per line, seeded by the user: a resumed run writes the same lines.
        simulator = LLMSimulator(llm, SimulatorConfig(seed=int(dialogue.user_id)), carries)
        said = simulator.utter(target, None, 0)
        row = {
            "dialogue": dialogue.id,
            "user": dialogue.user_id,
            "split": split,
            "target": target.id,
            "text": said.text,
            "rewrites": said.rewrites,
            "act_rewrites": said.act_rewrites,
            "fallback": said.fallback,
        }
        done.append(row)
        journal.append([row])
    out = descriptions_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in done)
    stats = {
        "llm": llm.name,
        "lines": len(done),
        "fallbacks": sum(r["fallback"] for r in done),
        "rewrites": sum(r["rewrites"] for r in done),
        "act_rewrites": sum(r["act_rewrites"] for r in done),
        "leaking_lines": sum(leaks(r["text"], dataset.catalog[r["target"]]) for r in done),
        "seconds_this_run": round(time.perf_counter() - start, 1),
    }
    (out.parent / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    journal.close()
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
