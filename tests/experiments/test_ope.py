"""The off-policy estimators on logs whose answer is known: an exploring logger, position-based clicks."""

from __future__ import annotations

import numpy as np
import pytest

from contract.errors import InputError
from contract.exploration import Exploration, draw, request_rng
from experiments.ope import ESTIMATORS, build, estimate, fit_click_model, paired
from training.clicklog.labels import LabelledItem, LabelledRanking

ITEMS = ["a", "b", "c", "d"]
THETA = [1.0, 0.6, 0.4, 0.3]  # examination by position
ATTRACT = {"a": 0.2, "b": 0.5, "c": 0.3, "d": 0.1}  # click probability once examined
LOGGER = np.array([1.0, 0.3, 0.2, -0.4])  # the logging student's log-odds for a, b, c, d


def _log(n: int, temperature: float = 1.0, seed: int = 0, users: int = 400) -> list[LabelledRanking]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = draw(LOGGER, Exploration(temperature), request_rng("arm", f"{seed}-{i}"))
        items = []
        for k, j in enumerate(d.order):
            p = ITEMS[j]
            items.append(LabelledItem(p, k, j, float(1 / (1 + np.exp(-LOGGER[j]))), None,
                                      clicked=bool(rng.random() < THETA[k] * ATTRACT[p]), propensity=d.propensity[k]))
        out.append(LabelledRanking(f"r{i}", f"u{i % users}", "q", "explore", "v", None, float(i), 4, True, items,
                                   "pl", d.slate(), None))
    return out


def _ranker(preference):
    def rank(r):
        return sorted(range(len(r.items)), key=lambda k: preference.index(r.items[k].product_id))
    return rank


def _logits(preference):
    return lambda r: [float(-preference.index(i.product_id)) for i in r.items]


def test_every_estimator_finds_the_known_value_of_a_new_ranking():
    target = ["b", "c", "a", "d"]
    truth = sum(t * ATTRACT[p] for t, p in zip(THETA, target, strict=True))  # 0.79
    d, skipped = build(_log(12_000), _ranker(target), _logits(target))
    assert skipped == {}
    est = estimate(d, resamples=400)
    for name in ESTIMATORS:
        e = est[name]
        assert e["ci95"][0] <= truth <= e["ci95"][1], (name, e, truth)
        assert abs(e["value"] - truth) / truth < 0.08, (name, e)
    logger_truth = est["logging policy (on-policy)"]["value"]
    assert logger_truth < truth - 0.05  # the new ranking is really better than the exploring logger
    assert est["IPS"]["matched_rankings"] > 0 and est["PBM-IPS"]["effective_n"] > 1000


def test_the_item_position_estimator_is_the_weighted_sum_it_is_defined_as():
    log = _log(3)
    target = ["b", "c", "a", "d"]
    d, _ = build(log, _ranker(target), _logits(target))
    by_hand = np.mean([sum(float(i.clicked) / i.propensity for k, i in enumerate(r.items) if target[k] == i.product_id)
                       for r in log])
    ips = np.mean([float(sum(i.clicked for i in r.items)) / r.slate_propensity
                   if [i.product_id for i in r.items] == target else 0.0 for r in log])
    est = estimate(d, resamples=50)
    assert est["PBM-IPS"]["value"] == pytest.approx(by_hand)
    assert est["IPS"]["value"] == pytest.approx(ips)


def test_a_paired_difference_tells_a_better_ranking_from_a_worse_one():
    log = _log(6000, seed=1)
    good, bad = ["b", "c", "a", "d"], ["d", "a", "c", "b"]
    da, _ = build(log, _ranker(bad), _logits(bad))
    db, _ = build(log, _ranker(good), _logits(good))
    truth = (sum(t * ATTRACT[p] for t, p in zip(THETA, good, strict=True)) - sum(t * ATTRACT[p] for t, p in zip(THETA, bad, strict=True)))
    diff = paired(da, db, resamples=300)
    for name in ("PBM-IPS", "SN-PBM-IPS", "DR"):
        assert diff[name]["ci95"][0] > 0, (name, diff[name])
        assert diff[name]["ci95"][0] <= truth <= diff[name]["ci95"][1], (name, diff[name], truth)


def test_logs_without_exploration_are_refused_by_name():
    log = _log(5)
    for r in log:
        r.policy = None
    with pytest.raises(InputError, match="exploring arm"):
        build(log, _ranker(ITEMS), _logits(ITEMS))


def test_the_click_model_recovers_a_logistic_truth():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5 * x[:, 1] + 0.3)))).astype(float)
    w = fit_click_model(x, y, ridge=1e-6)
    assert w == pytest.approx([1.5, -0.5, 0.3], abs=0.08)


def test_the_report_warns_when_few_logged_rankings_carry_the_weight():
    from experiments.ope import MIN_EFFECTIVE_N, report_markdown

    target = ["b", "c", "a", "d"]
    small, _ = build(_log(40), _ranker(target), _logits(target))
    large, _ = build(_log(4000), _ranker(target), _logits(target))
    for d, warned in ((small, True), (large, False)):
        est = estimate(d, resamples=50)
        assert (est["DR"]["effective_n"] < MIN_EFFECTIVE_N) is warned
        rep = {"requests": len(d.user), "users": 1, "skipped": {}, "estimand": "clicks", "resamples": 50,
               "candidates": {"new": {"bundle": "b", "estimates": est}}}
        assert ("**Warning:** the effective sample size" in report_markdown(rep)) is warned
