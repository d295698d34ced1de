"""Metrics against hand-computed values."""

import math

import pytest

from backend.eval.metrics import (
    MetricAccumulator,
    bleu,
    coverage,
    distinct,
    distinct_per_response,
    item_presence_f1,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    rouge,
)

RANKED = ["a", "b", "c"]


def test_ranking_metrics_for_gold_at_rank_two():
    assert recall_at_k(RANKED, "b", 1) == 0.0
    assert recall_at_k(RANKED, "b", 10) == 1.0
    assert ndcg_at_k(RANKED, "b", 10) == pytest.approx(1 / math.log2(3))  # 0.6309...
    assert ndcg_at_k(RANKED, "b", 10) == pytest.approx(0.630930, abs=1e-6)
    assert mrr_at_k(RANKED, "b", 10) == 0.5


def test_ranking_metrics_cut_at_k_and_missing_gold():
    # "c" is at rank 3: outside K=2, inside K=3.
    assert recall_at_k(RANKED, "c", 2) == 0.0
    assert ndcg_at_k(RANKED, "c", 2) == 0.0
    assert mrr_at_k(RANKED, "c", 2) == 0.0
    assert recall_at_k(RANKED, "c", 3) == 1.0
    assert ndcg_at_k(RANKED, "c", 3) == pytest.approx(0.5)  # 1 / log2(4)
    assert mrr_at_k(RANKED, "c", 3) == pytest.approx(1 / 3)
    assert ndcg_at_k(RANKED, "a", 1) == 1.0
    for fn in (recall_at_k, ndcg_at_k, mrr_at_k):
        assert fn(RANKED, "z", 50) == 0.0
        assert fn([], "a", 50) == 0.0


def test_coverage_counts_distinct_top1_items():
    assert coverage(["a", "b", "a", "c", "a"]) == 3
    assert coverage([]) == 0


def test_distinct_on_a_two_sentence_corpus():
    corpus = ["the cat sat", "The cat ran"]
    # Unigrams: the cat sat the cat ran -> 6 in all, 4 unique (the, cat, sat, ran).
    assert distinct(corpus, 1) == pytest.approx(4 / 6)
    # Bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 4 in all, 3 unique.
    assert distinct(corpus, 2) == pytest.approx(3 / 4)
    # Trigrams: one per sentence, different; n-grams never cross sentences.
    assert distinct(corpus, 3) == 1.0
    assert distinct(corpus, 4) == 0.0
    # PECRS/MESE convention: unique n-grams / 2 responses.
    assert distinct_per_response(corpus, 1) == pytest.approx(2.0)
    assert distinct_per_response(corpus, 2) == pytest.approx(1.5)
    assert distinct_per_response(corpus, 3) == pytest.approx(1.0)
    assert distinct_per_response(corpus, 4) == 0.0
    assert distinct([], 2) == 0.0 and distinct_per_response([], 2) == 0.0


def test_item_presence_f1_on_a_small_case():
    pred = [True, True, False, False, True]
    gold = [True, False, True, False, True]
    # TP = 2 (turns 0, 4), FP = 1 (turn 1), FN = 1 (turn 2).
    out = item_presence_f1(pred, gold)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    # Always predicting "recommends" on 3 positives out of 4: P = 3/4, R = 1, F1 = 6/7.
    out = item_presence_f1([True] * 4, [True, True, False, True])
    assert out == pytest.approx({"precision": 0.75, "recall": 1.0, "f1": 6 / 7})
    assert item_presence_f1([False, False], [True, False]) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    with pytest.raises(ValueError):
        item_presence_f1([True], [True, False])


def test_bleu_identical_and_hand_computed():
    refs = ["The cat is on the mat.", "Have you seen Heat?"]
    assert bleu(refs, refs, 1) == pytest.approx(1.0)
    assert bleu(refs, refs, 2) == pytest.approx(1.0)
    # hyp: the cat sat on the mat / ref: the cat is on the mat (6 tokens each, BP = 1).
    # Unigram matches: the x2, cat, on, mat -> p1 = 5/6. Bigram matches: the cat, on the,
    # the mat -> p2 = 3/5. BLEU-2 = sqrt(5/6 * 3/5).
    hyp, ref = ["the cat sat on the mat"], ["the cat is on the mat"]
    assert bleu(hyp, ref, 1) == pytest.approx(5 / 6)
    assert bleu(hyp, ref, 2) == pytest.approx(math.sqrt(0.5))
    # Brevity penalty: 2 tokens against 6 -> exp(1 - 6/2), all unigrams correct.
    assert bleu(["The cat"], ref, 1) == pytest.approx(math.exp(-2))
    assert bleu([], [], 2) == 0.0


def test_rouge_hand_case_and_stemming():
    # hyp: the cat sat / ref: the cat ran away. ROUGE-1 overlap 2: P = 2/3, R = 2/4, F = 4/7.
    # ROUGE-2 overlap 1 (the cat): P = 1/2, R = 1/3, F = 2/5. ROUGE-L: LCS "the cat" = ROUGE-1.
    out = rouge(["the cat sat"], ["the cat ran away"])
    assert out == pytest.approx({"rouge-1": 4 / 7, "rouge-2": 2 / 5, "rouge-l": 4 / 7})
    # The mean over pairs; an identical pair scores 1.
    out = rouge(["the cat sat", "Heat is great"], ["the cat ran away", "Heat is great"])
    assert out["rouge-1"] == pytest.approx((4 / 7 + 1) / 2)
    # use_stemmer: "movies" matches "movie".
    assert rouge(["movies"], ["movie"])["rouge-1"] == pytest.approx(1.0)


DEFAULT_KEYS = {
    "recall@1", "recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr@10", "mrr@50", "coverage",
    "bleu-1", "bleu-2", "rouge-1", "rouge-2", "rouge-l",
    "distinct-1", "distinct-2", "distinct-3", "distinct-4",
    "distinct-1/resp", "distinct-2/resp", "distinct-3/resp", "distinct-4/resp",
    "item-f1", "item-precision", "item-recall", "n_rec", "n_text",
}  # fmt: skip


def test_accumulator_keys_and_one_sample_per_gold_item():
    acc = MetricAccumulator()
    acc.add_ranking(["a", "b", "c"], ["a", "c"])  # two samples: ranks 1 and 3
    acc.add_ranking(["b", "a"], ["a", "a"])  # a repeated mention is one sample: rank 2
    acc.add_ranking(["b"], [])  # no gold item, no sample
    acc.add_text("the cat sat", "the cat ran away")
    acc.add_presence(True, True)
    acc.add_presence(True, False)
    out = acc.result()
    assert set(out) == DEFAULT_KEYS
    assert out["n_rec"] == 3 and out["n_text"] == 1
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@10"] == 1.0
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 3)
    assert out["coverage"] == 2  # top-1 items a and b
    assert out["rouge-1"] == pytest.approx(4 / 7)
    assert out["item-precision"] == 0.5 and out["item-recall"] == 1.0


def test_accumulator_custom_ks_and_absent_groups():
    acc = MetricAccumulator(recall_ks=(1, 5), rank_ks=(5,))
    acc.add_ranking(["x", "y", "z", "w", "g"], ["g"])
    out = acc.result()
    assert set(out) == {"recall@1", "recall@5", "ndcg@5", "mrr@5", "coverage", "n_rec", "n_text"}
    assert out["recall@5"] == 1.0 and out["mrr@5"] == pytest.approx(0.2)
    assert out["n_text"] == 0
    assert MetricAccumulator().result() == {"n_rec": 0, "n_text": 0}
