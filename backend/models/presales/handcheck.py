"""The hand-checked sample of the silver labels: 50 seeded ReDial test rows per task, each with
the silver label and the label a reader gave it (``hand``), and how well the two agree.

Rows, per task: understanding = 25 user utterances with a silver pair and 25 without (the rules'
precision and recall both show); elicitation = 50 staff turns with a question mark, labelled or
not; recommendation = 50 staff turns that name a new film (is it recommended, and is it the
first?); generation = 50 generation targets (are the attributes and items the turn's?).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from backend.data.base import Dataset
from backend.models.presales.metrics import tag_scores
from backend.models.presales.schema import format_pairs, parse_pairs
from backend.models.presales.silver import Labeller, annotate

TASKS = ("understand", "elicit", "recommend", "generate")
FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "presales"


def silver_rows(dataset: Dataset, split: str = "test") -> dict[str, list[dict[str, Any]]]:
    """Every candidate row per task with its silver label, in dialogue order."""
    labeller = Labeller(dataset.catalog)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    for dialogue in dataset.splits[split]:
        turns = annotate(dialogue, labeller)
        for i, turn in enumerate(turns):
            base = {
                "dialogue_id": dialogue.id,
                "turn": i,
                "before": turns[i - 1].text if i else "",
                "text": turn.text,
                "items": [
                    dataset.catalog[x].display_title for x in turn.items if x in dataset.catalog
                ],
            }
            if turn.role == "user":
                rows["understand"].append({**base, "silver": format_pairs(turn.needs)})
                continue
            if "?" in turn.text:
                rows["elicit"].append({**base, "silver": format_pairs(turn.asked)})
            if turn.recommended:
                gold = dataset.catalog[turn.recommended[0]].display_title
                rows["recommend"].append({**base, "silver": gold})
            if turn.asked or turn.recommended:
                titles = [dataset.catalog[x].display_title for x in turn.recommended]
                rows["generate"].append(
                    {**base, "silver": format_pairs(turn.asked) + " | " + "; ".join(titles)}
                )
    return rows


def draw(dataset: Dataset, n: int = 50, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The seeded sample; ``hand`` starts as the silver label, to be confirmed or corrected."""
    rng = random.Random(seed)
    pools = silver_rows(dataset)
    out = {}
    for task, pool in pools.items():
        if task == "understand":
            full = [r for r in pool if r["silver"] != "none"]
            empty = [r for r in pool if r["silver"] == "none"]
            picked = rng.sample(full, n // 2) + rng.sample(empty, n - n // 2)
        else:
            picked = rng.sample(pool, n)
        out[task] = [{"task": task, **r, "hand": r["silver"], "note": ""} for r in picked]
    return out


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact agreement of silver and hand labels, and for pair labels the silver's P/R/F1 taken
    against the hand labels (pooled and per row)."""
    exact = sum(r["silver"] == r["hand"] for r in rows) / len(rows)
    result: dict[str, Any] = {"rows": len(rows), "exact": round(exact, 4)}
    task = rows[0]["task"]
    if task in ("understand", "elicit"):
        silver = [parse_pairs(r["silver"]) for r in rows]
        hand = [parse_pairs(r["hand"]) for r in rows]
        scores = tag_scores(silver, hand)
        result.update({k: round(v, 4) for k, v in scores.items() if k != "n"})
    return result


def load(task: str, folder: Path = FIXTURES) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
