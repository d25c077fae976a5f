"""Quality by slice (training/slices.py): the buckets, the popularity classes and the verdicts."""

from __future__ import annotations

import numpy as np

from training.slices import history_bucket, popularity_classes, slice_report, slice_table


class _Shop:
    """The two things slices read from a dataset: products and interactions, with a user's history."""

    def __init__(self) -> None:
        # P0 bought 6 times, P1 3, P2 1 in training; P3 never (cold)
        buys = ["P0"] * 6 + ["P1"] * 3 + ["P2"]
        self.products = {f"P{i}": {} for i in range(4)}
        self.interactions = [{"product_id": p, "split": "train", "user_id": f"u{i}"} for i, p in enumerate(buys)]
        self.interactions.append({"product_id": "P3", "split": "test", "user_id": "u0"})

    def history(self, row: dict) -> list[str]:
        return ["P0"] * row["n_hist"]


def test_history_buckets_cover_every_length():
    assert [history_bucket(n) for n in (0, 1, 2, 3, 9, 10, 250)] == ["0", "1-2", "1-2", "3-9", "3-9", "10+", "10+"]


def test_popularity_classes_split_the_training_purchases_by_cumulative_share():
    # shares before each product, most bought first: P0 0.0 (head), P1 0.6 (torso), P2 0.9 (tail); P3 cold
    assert popularity_classes(_Shop()) == {"P0": "head", "P1": "torso", "P2": "tail", "P3": "cold"}


def test_a_slice_where_the_model_is_worse_than_a_rule_is_flagged_and_others_are_not():
    shop = _Shop()
    n = 80
    rows = [{"n_hist": 0 if i < 40 else 5, "product_id": "P0" if i % 2 else "P3"} for i in range(n)]
    rng = np.random.default_rng(0)
    rule = rng.uniform(0.3, 0.6, n)
    # the model beats the rule for users with a history and loses to it for users without one
    model = np.where(np.arange(n) < 40, rule - 0.2, rule + 0.2)
    values = {"first stage": rule - 0.1, "rule": rule, "model": model}
    rep = slice_report(shop, rows, values, ["model"], ["rule"], "first stage")
    hist = rep["history length"]
    assert set(hist) == {"0", "3-9"} and hist["0"]["queries"] == 40
    assert hist["0"]["versus_best_rule"]["model"]["loses"] is True
    assert hist["3-9"]["versus_best_rule"]["model"]["loses"] is False
    assert hist["3-9"]["versus_first_stage"]["model"]["ci95"][0] > 0
    assert set(rep["target popularity"]) == {"head", "cold"}
    text = slice_table(rep, "first stage")
    assert "history length: 0" in text and "**loses**" in text and "history length: 0 (model)" in text
