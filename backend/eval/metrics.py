"""Offline CRS metrics: ranking (Recall/NDCG/MRR@K, coverage), text (BLEU, ROUGE, Distinct) and
item-presence F-1, following PECRS §4.1 and the UniCRS/MESE evaluation code conventions.

Scale: every score is on the 0-1 scale (BLEU is sacrebleu's 0-100 divided by 100), except
``coverage`` and the counts, which are integers, and ``distinct_per_response``, which is a ratio
to the number of responses and can exceed 1.

Ranking samples follow PECRS/UniCRS: a recommender turn that mentions several items gives one
sample per gold item, each scored against the same ranked list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sacrebleu.metrics import BLEU

DEFAULT_RECALL_KS: tuple[int, ...] = (1, 10, 50)
DEFAULT_RANK_KS: tuple[int, ...] = (10, 50)
DEFAULT_BLEU_NS: tuple[int, ...] = (1, 2)
DEFAULT_DISTINCT_NS: tuple[int, ...] = (1, 2, 3, 4)

_ROUGE_TYPES = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}


def _rank_of(ranked: Sequence[str], gold: str) -> int | None:
    """1-based position of ``gold`` in ``ranked``, or None when it is absent."""
    for position, item_id in enumerate(ranked, start=1):
        if item_id == gold:
            return position
    return None


def recall_at_k(ranked: Sequence[str], gold: str, k: int) -> float:
    """Recall@K for one gold item: 1 if rank(gold) <= k else 0 (rank is 1-based)."""
    rank = _rank_of(ranked[:k], gold)
    return 1.0 if rank is not None else 0.0


def ndcg_at_k(ranked: Sequence[str], gold: str, k: int) -> float:
    """NDCG@K for one gold item: 1 / log2(rank + 1) if rank <= k else 0.

    With a single relevant item the ideal DCG is 1, so DCG is already normalised.
    """
    rank = _rank_of(ranked[:k], gold)
    return 1.0 / math.log2(rank + 1) if rank is not None else 0.0


def mrr_at_k(ranked: Sequence[str], gold: str, k: int) -> float:
    """MRR@K for one gold item: 1 / rank if rank <= k else 0."""
    rank = _rank_of(ranked[:k], gold)
    return 1.0 / rank if rank is not None else 0.0


def coverage(top1_items: Sequence[str]) -> int:
    """The "Unique" of PECRS: |{top-1 item of each prediction}|, the number of distinct top-1 items."""
    return len(set(top1_items))


def bleu(hypotheses: Sequence[str], references: Sequence[str], n: int) -> float:
    """Corpus BLEU-n on the 0-1 scale, via sacrebleu (one reference per hypothesis).

    BLEU-n = BP * exp(mean_{i=1..n} log p_i), where p_i is the corpus-level clipped i-gram precision
    and BP = min(1, exp(1 - ref_len / hyp_len)). sacrebleu settings: ``max_ngram_order=n``,
    13a tokenisation, lower-cased, default "exp" smoothing, and ``effective_order=True`` so that
    orders with no n-gram in the whole corpus (every hypothesis shorter than n words) are dropped
    instead of zeroing the score.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    metric = BLEU(max_ngram_order=n, effective_order=True, lowercase=True)
    return metric.corpus_score(list(hypotheses), [list(references)]).score / 100.0


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-1) over hypothesis/reference pairs, via ``rouge_score``.

    For each pair, F = 2PR / (P + R) with P = overlap / |hyp n-grams| and R = overlap / |ref n-grams|
    (for ROUGE-L the overlap is the longest common subsequence). ``RougeScorer(use_stemmer=True)``:
    lower-cased, non-alphanumerics dropped, Porter-stemmed. Keys: "rouge-1", "rouge-2", "rouge-l".
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return {key: 0.0 for key in _ROUGE_TYPES}
    # Imported here: rouge_score pulls in nltk, which takes ~2 s to import.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES.values()), use_stemmer=True)
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        # rouge_score takes (target, prediction) in that order.
        scores = scorer.score(ref, hyp)
        for key, rouge_type in _ROUGE_TYPES.items():
            totals[key] += scores[rouge_type].fmeasure
    return {key: total / len(hypotheses) for key, total in totals.items()}


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Word n-grams of one response; tokens are ``text.lower().split()``, punctuation kept."""
    tokens = text.lower().split()
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(hypotheses: Sequence[str], n: int) -> float:
    """Corpus Distinct-n in [0, 1]: |unique n-grams over the corpus| / |n-gram occurrences over the corpus|.

    Tokenisation: lower-case, split on whitespace (punctuation stays attached to words); n-grams
    never cross response boundaries. 0.0 when the corpus has no n-gram.

    This is the classic Li et al. (2016) ratio. PECRS, MESE and UniCRS instead divide the number
    of distinct n-grams by the number of responses, which is not bounded by 1 (PECRS reports
    Dist@4 = 2.15); that convention is `distinct_per_response`.
    """
    grams = [gram for hyp in hypotheses for gram in _ngrams(hyp, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_per_response(hypotheses: Sequence[str], n: int) -> float:
    """PECRS/MESE/UniCRS Distinct-n: |unique n-grams over the corpus| / number of responses.

    Same tokenisation as `distinct`. Can exceed 1. 0.0 for an empty corpus.
    """
    if not hypotheses:
        return 0.0
    unique = {gram for hyp in hypotheses for gram in _ngrams(hyp, n)}
    return len(unique) / len(hypotheses)


def distinct_mean(hypotheses: Sequence[str], n: int) -> float:
    """Distinct-n as the pre-sales paper defines it (App. D): each response's distinct n-grams
    over its n-grams, averaged over the responses (a response too short for one n-gram counts 0).

    Same tokenisation as `distinct`. 0.0 for an empty corpus.
    """
    if not hypotheses:
        return 0.0
    ratios = [len(set(g)) / len(g) if (g := _ngrams(hyp, n)) else 0.0 for hyp in hypotheses]
    return sum(ratios) / len(ratios)


def item_presence_f1(predicted: Sequence[bool], gold: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F-1 of "the turn recommends an item" (the positive class).

    precision = TP / (TP + FP), recall = TP / (TP + FN), f1 = 2PR / (P + R); each is 0.0 when its
    denominator is 0. Keys: "precision", "recall", "f1".
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold labels")
    tp = sum(p and g for p, g in zip(predicted, gold, strict=True))
    fp = sum(p and not g for p, g in zip(predicted, gold, strict=True))
    fn = sum(g and not p for p, g in zip(predicted, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


class MetricAccumulator:
    """Collects ranking, text and item-presence observations and reports every metric at once.

    ``result()`` keys (K and n values follow the constructor arguments; defaults shown):
    "recall@1", "recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr@10", "mrr@50", "coverage",
    "bleu-1", "bleu-2", "rouge-1", "rouge-2", "rouge-l", "distinct-1".."distinct-4",
    "distinct-1/resp".."distinct-4/resp", "item-f1", "item-precision", "item-recall",
    "perplexity", "n_rec", "n_text". Ranking keys are absent when no ranking sample was added, text keys when no text
    was added, item-* keys when no presence label was added, and "perplexity" when no
    reference likelihood was added; "n_rec" and "n_text" are always
    there.
    """

    def __init__(
        self,
        recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
        rank_ks: Sequence[int] = DEFAULT_RANK_KS,
        bleu_ns: Sequence[int] = DEFAULT_BLEU_NS,
        distinct_ns: Sequence[int] = DEFAULT_DISTINCT_NS,
    ):
        self.recall_ks = tuple(recall_ks)
        self.rank_ks = tuple(rank_ks)
        self.bleu_ns = tuple(bleu_ns)
        self.distinct_ns = tuple(distinct_ns)
        self._sums: dict[str, float] = {}
        self._n_rec = 0
        self._top1: list[str] = []
        self._hyps: list[str] = []
        self._refs: list[str] = []
        self._pred_presence: list[bool] = []
        self._gold_presence: list[bool] = []
        self._nll = 0.0
        self._nll_tokens = 0

    def add_ranking(self, ranked: Sequence[str], gold_items: Sequence[str]) -> None:
        """Add one recommender turn: one ranking sample per distinct gold item."""
        # A title mentioned twice in one turn is still one recommendation.
        golds = list(dict.fromkeys(gold_items))
        if not golds:
            return
        if ranked:
            self._top1.append(ranked[0])
        for gold in golds:
            self._n_rec += 1
            for k in self.recall_ks:
                self._add(f"recall@{k}", recall_at_k(ranked, gold, k))
            for k in self.rank_ks:
                self._add(f"ndcg@{k}", ndcg_at_k(ranked, gold, k))
                self._add(f"mrr@{k}", mrr_at_k(ranked, gold, k))

    def add_text(self, hyp: str, ref: str) -> None:
        """Add one generated response and its reference."""
        self._hyps.append(hyp)
        self._refs.append(ref)

    def add_presence(self, pred: bool, gold: bool) -> None:
        """Add one "does this turn recommend an item" decision and its gold label."""
        self._pred_presence.append(bool(pred))
        self._gold_presence.append(bool(gold))

    def add_nll(self, total: float, tokens: int) -> None:
        """Add a reference reply's summed negative log-likelihood (nats) over ``tokens`` tokens."""
        self._nll += total
        self._nll_tokens += tokens

    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value

    def result(self) -> dict[str, float]:
        """All metrics collected so far (see the class docstring for keys and absences)."""
        out: dict[str, float] = {}
        if self._n_rec:
            for k in self.recall_ks:
                out[f"recall@{k}"] = self._sums[f"recall@{k}"] / self._n_rec
            for name in ("ndcg", "mrr"):
                for k in self.rank_ks:
                    out[f"{name}@{k}"] = self._sums[f"{name}@{k}"] / self._n_rec
            out["coverage"] = coverage(self._top1)
        if self._hyps:
            for n in self.bleu_ns:
                out[f"bleu-{n}"] = bleu(self._hyps, self._refs, n)
            out.update(rouge(self._hyps, self._refs))
            for n in self.distinct_ns:
                out[f"distinct-{n}"] = distinct(self._hyps, n)
            for n in self.distinct_ns:
                out[f"distinct-{n}/resp"] = distinct_per_response(self._hyps, n)
        if self._gold_presence:
            prf = item_presence_f1(self._pred_presence, self._gold_presence)
            out["item-f1"] = prf["f1"]
            out["item-precision"] = prf["precision"]
            out["item-recall"] = prf["recall"]
        if self._nll_tokens:
            # Corpus perplexity: exp of the mean per-token negative log-likelihood.
            out["perplexity"] = math.exp(self._nll / self._nll_tokens)
        out["n_rec"] = self._n_rec
        out["n_text"] = len(self._hyps)
        return out
