"""The paper's measures (§4.4, App. D): precision, recall and F1 of the tags for understanding and
elicitation, per sample and then averaged (several F1s in Tables 1-2 lie below both P and R,
which a pooled F1 cannot); Accuracy, Hit@5 and MRR@5 for recommendation (and for elicitation's
ranked options, as the issue asks); BLEU and Dist-1 (per response, then averaged) for generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import mean

from backend.eval.metrics import bleu, distinct_mean, mrr_at_k, recall_at_k
from backend.models.presales.schema import Pair


def _key(pair: Pair, with_value: bool) -> tuple[str, str]:
    return (pair.attr, " ".join(pair.value.casefold().split()) if with_value else "")


def prf(
    predicted: Iterable[Pair], gold: Iterable[Pair], with_value: bool = True
) -> dict[str, float]:
    """One sample's P/R/F1 over its tags ((attribute, value), or attributes alone). An empty
    gold scores 1 for an empty prediction and 0 for anything else."""
    pred = {_key(p, with_value) for p in predicted}
    true = {_key(p, with_value) for p in gold}
    if not true:
        score = float(not pred)
        return {"precision": score, "recall": score, "f1": score}
    hit = len(pred & true)
    p = hit / len(pred) if pred else 0.0
    r = hit / len(true)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if hit else 0.0}


def tag_scores(
    predicted: Sequence[list[Pair]], gold: Sequence[list[Pair]], with_value: bool = True
) -> dict[str, float]:
    """P/R/F1 averaged over samples (the paper's), and the pooled (micro) F1 beside them."""
    rows = [prf(p, g, with_value) for p, g in zip(predicted, gold, strict=True)]
    hit = sum(
        len({_key(x, with_value) for x in p} & {_key(x, with_value) for x in g})
        for p, g in zip(predicted, gold, strict=True)
    )
    n_pred = sum(len({_key(x, with_value) for x in p}) for p in predicted)
    n_gold = sum(len({_key(x, with_value) for x in g}) for g in gold)
    micro = 2 * hit / (n_pred + n_gold) if n_pred + n_gold else 1.0
    return {
        **{k: mean(r[k] for r in rows) if rows else 0.0 for k in ("precision", "recall", "f1")},
        "micro_f1": micro,
        "n": len(rows),
    }


def rank_scores(rankings: Sequence[Sequence[str]], golds: Sequence[set[str]]) -> dict[str, float]:
    """Accuracy (Hit@1), Hit@5 and MRR@5; a ranking hits when any gold string is at the rank."""

    def best(ranking: Sequence[str], gold: set[str], fn, k: int) -> float:
        return max((fn(ranking, g, k) for g in gold), default=0.0)

    n = len(rankings)
    if not n:
        return {"accuracy": 0.0, "hit@5": 0.0, "mrr@5": 0.0, "n": 0}
    pairs = list(zip(rankings, golds, strict=True))
    return {
        "accuracy": mean(best(r, g, recall_at_k, 1) for r, g in pairs),
        "hit@5": mean(best(r, g, recall_at_k, 5) for r, g in pairs),
        "mrr@5": mean(best(r, g, mrr_at_k, 5) for r, g in pairs),
        "n": n,
    }


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-1/2 (sacrebleu, 0-1) and Dist-1 as the paper computes it."""
    return {
        "bleu1": bleu(hypotheses, references, 1),
        "bleu2": bleu(hypotheses, references, 2),
        "dist1": distinct_mean(hypotheses, 1),
        "n": len(hypotheses),
    }
