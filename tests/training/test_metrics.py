"""Metrics against hand-computed examples, including misses and ties."""

import math

import numpy as np
import pytest

from training.metrics import kept_gain, paper_metrics, relative_gain, rerank, sampled_metrics


def test_single_queries_by_hand():
    lists = [["a", "b", "c"], ["x", "t", "y", "z", "w"], list("abcdefghij"), ["p", "q"]]
    targets = ["a", "z", "i", "nope"]  # ranks 1, 4, 9, miss
    m = paper_metrics(lists, targets)
    assert m["n"] == 4
    # MRR@8: 1 + 1/4 + 0 (rank 9 > 8) + 0 (miss)
    assert m["MRR@8"] == pytest.approx((1 + 0.25) / 4)
    # NDCG@4: 1/log2(2) + 1/log2(5) + 0 + 0
    assert m["NDCG@4"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["Recall@4"] == pytest.approx(2 / 4)
    assert m["Recall@1"] == pytest.approx(1 / 4)
    assert set(m) == {"MRR@8", "NDCG@4", "Recall@4", "Recall@1", "n"}


def test_rank_two_and_three():
    m = paper_metrics([["b", "a"], ["c", "d", "a"]], ["a", "a"])
    assert m["MRR@8"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["NDCG@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert m["Recall@1"] == 0.0 and m["Recall@4"] == 1.0


def test_misses_count_for_every_query():
    assert paper_metrics([[], ["a"]], ["a", "b"]) == {"MRR@8": 0.0, "NDCG@4": 0.0, "Recall@4": 0.0, "Recall@1": 0.0, "n": 2}


def test_ties_keep_incoming_order_so_a_constant_scorer_changes_nothing():
    first_stage = ["c", "a", "b", "d"]
    assert rerank(first_stage, [0.5, 0.5, 0.5, 0.5]) == first_stage
    assert rerank(first_stage, [0.1, 0.9, 0.9, 0.0]) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        rerank(["a"], [1.0, 2.0])


def test_sampled_protocol_by_hand_with_pessimistic_ties():
    pos = np.array([5.0, 1.0, 0.0])
    neg = np.zeros((3, 99))
    neg[0, :] = 1.0  # positive beats all: rank 1
    neg[1, :6] = 2.0  # six above: rank 7
    m = sampled_metrics(pos, neg)  # third: all 99 tie with the positive -> rank 100
    assert m["HR@5"] == pytest.approx(1 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["HR@20"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(8)) / 3)
    assert m["NDCG@5"] == pytest.approx(1 / 3)
    assert m["n"] == 3


def test_gain_helpers():
    base, teacher, student = {"NDCG@4": 0.2}, {"NDCG@4": 0.3}, {"NDCG@4": 0.29}
    assert relative_gain(teacher, base) == pytest.approx(0.5)
    assert kept_gain(student, teacher, base) == pytest.approx(0.9)


def test_within_query_auc_by_hand():
    from training.metrics import pairwise_auc

    rows = [
        # target beats 2 of 3 others: 2/3
        {"candidates": [{"s": 0.9, "label": 0}, {"s": 0.5, "label": 1}, {"s": 0.1, "label": 0}, {"s": 0.2, "label": 0}]},
        # a tie counts half: 0.5 + 1 over 2 pairs
        {"candidates": [{"s": 0.3, "label": 1}, {"s": 0.3, "label": 0}, {"s": 0.0, "label": 0}]},
        # pairs never cross queries: this query's low target loses only to its own candidate
        {"candidates": [{"s": -5.0, "label": 1}, {"s": -4.0, "label": 0}]},
    ]
    assert pairwise_auc(rows, "s") == pytest.approx((2 + 1.5 + 0) / (3 + 2 + 1))
    assert math.isnan(pairwise_auc([], "s"))


def test_random_order_by_hand():
    from training.metrics import random_order

    lists = [["a", "b"], ["c", "d", "e", "f", "g"], ["x"]]
    targets = ["a", "g", "absent"]
    out = random_order(lists, targets, observed=(1 + 1 + 0) / 3, rounds=20_000, seed=3)
    ndcg2 = (1 + 1 / math.log2(3)) / 2
    ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 5  # rank 5 is past the cut-off
    assert out["expected"]["NDCG@4"] == pytest.approx((ndcg2 + ndcg5) / 3)
    assert out["expected"]["Recall@1"] == pytest.approx((1 / 2 + 1 / 5) / 3)
    assert out["expected"]["Recall@4"] == pytest.approx((1 + 4 / 5) / 3)
    assert out["expected"]["n"] == 3
    # both targets first is the only way to reach the observed mean: 1/2 * 1/5 of the shuffles
    assert out["p_value"] == pytest.approx(0.1, abs=0.01)
    assert out["expected"]["NDCG@4"] < out["p95"] <= 2 / 3
    assert random_order(lists, targets, observed=0.0)["p_value"] == 1.0
    with pytest.raises(ValueError, match="2 ranked lists but 3 targets"):
        random_order(lists[:2], targets)


def test_paired_bootstrap_by_hand():
    from training.metrics import paired_bootstrap

    base = [["x", "t"], ["t", "x"], ["x", "y"]]
    better = [["t", "x"], ["t", "x"], ["x", "y"]]  # query 1 moves the target from rank 2 to 1; the others tie
    r = paired_bootstrap(better, base, ["t", "t", "t"], resamples=2000)
    gain = 1 - 1 / math.log2(3)
    assert r["diff"] == pytest.approx(gain / 3) and (r["wins"], r["losses"], r["n"]) == (1, 0, 3)
    lo, hi = r["ci95"]
    assert 0.0 <= lo < r["diff"] < hi <= gain, "resampling one winning query in three spans 0 to the full gain"
    same = paired_bootstrap(base, base, ["t", "t", "t"], resamples=100)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["wins"] == same["losses"] == 0
