"""Running a partner over task examples, and scoring its predictions as Tables 1-4 do.

A prediction is a dict per example: ``text`` (the pairs, the top attribute option, the letter,
the response), ``ranking`` for elicitation (options) and recommendation (candidate ids, best
first; ``catalog`` adds the CRS's whole-catalog top 50). Predictions are journaled one example at
a time, so a stopped run continues where it was.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from backend.catalog import Catalog
from backend.journal import Journal
from backend.models.presales.candidates import LETTERS
from backend.models.presales.crs import UniCRS
from backend.models.presales.llm import LLMPartner, messages, understand_output
from backend.models.presales.metrics import rank_scores, tag_scores, text_scores
from backend.models.presales.schema import Example, Pair, format_pairs, parse_pairs

Prediction = dict[str, Any]
Hints = dict[str, tuple[str, str | None]]
CATALOG_TOP = 50


def attribute_options(train: Iterable[Example], min_count: int = 2) -> list[str]:
    """The elicitation answers to rank: every label ("genre", "genre: Comedy") seen at least
    ``min_count`` times in train, most frequent first."""
    counts = Counter(p.text() for e in train if e.task == "elicit" for p in e.label)
    return [o for o, n in counts.most_common() if n >= min_count]


def ranking_text(example: Example, scores: list[float], top: int = 10) -> str:
    """``C (0.41), A (0.22), ...``: the CRS's ranking of the 20 letters with softmax scores (§3.4
    puts the ranking in the LLM's input)."""
    peak = max(scores)
    weights = [math.exp(s - peak) for s in scores]
    total = sum(weights)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top]
    return ", ".join(f"{LETTERS[i]} ({weights[i] / total:.2f})" for i in order)


def partner_text(example: Example, prediction: Prediction) -> str:
    """A prediction as its partner reads it: the CRS ranking for recommendation, else the text."""
    if example.task == "recommend" and "scores" in prediction:
        return ranking_text(example, prediction["scores"])
    return prediction["text"]


def pick_of(example: Example, prediction: Prediction) -> str | None:
    """The item the LLM recommended (its top candidate), for Eq. 4."""
    ranking = prediction.get("ranking") or []
    return ranking[0] if example.task == "recommend" and ranking else None


def crs_predict(
    net: UniCRS, example: Example, options: list[str], hint: str = "", pick: str | None = None
) -> Prediction:
    """One example through the CRS (hint and pick: the LLM's, for X' and Eq. 4)."""
    if example.task == "understand":
        return {"text": understand_output(net.generate(example, hint, 32))}
    if example.task == "generate":
        return {"text": net.generate(example, hint, 48)}
    if example.task == "elicit":
        scores = net.option_scores(example, hint, options)
        order = sorted(range(len(options)), key=lambda i: -scores[i])
        return {"text": options[order[0]], "ranking": [options[i] for i in order]}
    row = net.table.row(example.dataset, pick) if pick else None
    scores = net.rank(example, row)
    cand = [scores.get(c, -math.inf) for c in example.candidates]
    order = sorted(range(len(cand)), key=lambda i: -cand[i])
    catalog = sorted(scores, key=lambda i: -scores[i])[:CATALOG_TOP]
    return {
        "text": LETTERS[order[0]] if order else "",  # no candidates: the catalog ranking only
        "ranking": [example.candidates[i] for i in order],
        "scores": [round(s, 4) for s in cand],
        "catalog": catalog,
    }


def llm_predict_batch(
    llm: LLMPartner,
    examples: list[Example],
    catalogs: dict[str, Catalog],
    options: list[str],
    crs_outputs: dict[str, str],
) -> list[Prediction]:
    """Examples of one task through the LLM (text tasks batched)."""
    chats = [messages(e, catalogs[e.dataset], crs_outputs.get(e.example_id, "")) for e in examples]
    task = examples[0].task
    if task in ("understand", "generate"):
        texts = llm.texts(chats, task)
        if task == "understand":
            texts = [understand_output(t) for t in texts]
        return [{"text": t} for t in texts]
    out = []
    for example, chat in zip(examples, chats, strict=True):
        if task == "elicit":
            scores, answer = llm.option_scores(chat, options)
            order = sorted(range(len(options)), key=lambda i: -scores[i])
            out.append({"text": answer, "ranking": [options[i] for i in order]})
        else:
            scores, answer = llm.letter_scores(chat, len(example.candidates))
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            out.append(
                {
                    "text": answer,
                    "ranking": [example.candidates[i] for i in order],
                    "scores": [round(s, 4) for s in scores],
                }
            )
    return out


def run_predictions(
    path: Path,
    settings: dict[str, Any],
    examples: list[Example],
    predict: Callable[[list[Example]], list[Prediction]],
    batch: int = 8,
    desc: str = "predict",
) -> dict[str, Prediction]:
    """``predict`` over ``examples`` in batches, journaled at ``path``; example id -> prediction."""
    journal = Journal(path, settings)
    done = journal.load(
        lambda i, r: i < len(examples) and r["example_id"] == examples[i].example_id
    )
    bar = tqdm(total=len(examples), initial=len(done), desc=desc, unit="example")
    for start in range(len(done), len(examples), batch):
        chunk = examples[start : start + batch]
        rows = [
            {"example_id": e.example_id, **p} for e, p in zip(chunk, predict(chunk), strict=True)
        ]
        journal.append(rows)
        done += rows
        bar.update(len(chunk))
    bar.close()
    return {r["example_id"]: r for r in done}


# ----------------------------------------------------------------------------- scoring


def label_strings(pairs: list[Pair]) -> set[str]:
    return {p.text() for p in pairs}


def score_task(task: str, examples: list[Example], preds: dict[str, Prediction]) -> dict[str, Any]:
    """The task's table figures over ``examples`` (those without a prediction are an error)."""
    rows = [(e, preds[e.example_id]) for e in examples]
    if task == "understand":
        return tag_scores([parse_pairs(p["text"]) for _, p in rows], [e.label for e, _ in rows])
    if task == "elicit":
        tags = tag_scores(
            [parse_pairs(p["text"]) for _, p in rows], [e.label for e, _ in rows], with_value=False
        )
        ranks = rank_scores(
            [p["ranking"] for _, p in rows], [label_strings(e.label) for e, _ in rows]
        )
        return {**tags, **{f"option_{k}": v for k, v in ranks.items() if k != "n"}}
    if task == "recommend":
        result = rank_scores([p["ranking"] for _, p in rows], [{e.gold} for e, _ in rows])
        if all("catalog" in p for _, p in rows):
            catalog = rank_scores([p["catalog"] for _, p in rows], [{e.gold} for e, _ in rows])
            result.update({f"catalog_{k}": v for k, v in catalog.items() if k != "n"})
        return result
    return text_scores([p["text"] for _, p in rows], [e.reference for e, _ in rows])


def majority_predictions(
    train: list[Example], examples: list[Example], options: list[str]
) -> dict[str, Prediction]:
    """The trivial rows: the most frequent train label (understanding, elicitation), the
    candidates in their given (shuffled) order (recommendation = chance)."""
    out = {}
    for task in ("understand", "elicit"):
        common = Counter(format_pairs(e.label) for e in train if e.task == task).most_common(1)
        label = common[0][0] if common else "none"
        for e in examples:
            if e.task == task:
                out[e.example_id] = {"text": label, "ranking": options}
    for e in examples:
        if e.task == "recommend":
            out[e.example_id] = {"text": "A", "ranking": list(e.candidates)}
    return out
