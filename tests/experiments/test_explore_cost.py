"""``hmpps explore-cost`` on the trained tiny pipeline: exact expected NDCG@4 under each exploration setting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from hmpps.cli import app


def test_explore_cost_spans_the_student_and_a_uniform_shuffle(tiny_pipeline, synthetic_dir, tmp_path):
    out = tmp_path / "cost.json"
    res = CliRunner().invoke(app, ["explore-cost", "--bundle", str(tiny_pipeline / "bundle"), "--data",
                                   str(synthetic_dir), "--candidates", str(tiny_pipeline / "first_stage"),
                                   "--temperatures", "0.001,0.3,100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    det, cold, mid, hot = rep["settings"]
    assert det["temperature"] == 0 and cold["temperature"] == 0.001
    # a cold policy is the student, except where the student ties (the deterministic order breaks a tie by
    # the caller's order, Plackett-Luce splits it evenly): never worse than a uniform shuffle of those ties
    assert cold["NDCG@4"] >= hot["NDCG@4"]
    # at T = 100 every order of the top 10 is nearly equally likely: the expected NDCG@4 of a uniform shuffle
    from distill.tables import BundleTables, held_out_lists

    tests = held_out_lists(BundleTables(tiny_pipeline / "bundle"), synthetic_dir, tiny_pipeline / "first_stage")
    uniform = np.mean([sum(1 / (len(p) * math.log2(k + 2)) for k in range(min(4, len(p)))) if t in p else 0.0
                       for p, t in zip(tests.lists, tests.targets, strict=True)])
    assert abs(hot["NDCG@4"] - uniform) < 0.05 * uniform  # T = 100 is near uniform, not exactly
    assert 0.09 < hot["mean_display_probability"] < 0.2  # ~1/10 per slot
    assert det["NDCG@4"] > uniform  # the trained student beats chance, so redrawing it costs
    assert hot["cost"] > 0 and hot["cost_ci95"][0] > 0
    assert 0 < mid["mean_display_probability"] < 1 and (out.with_suffix(".md")).is_file()


def test_explore_cost_names_a_bad_temperature(tiny_pipeline, synthetic_dir):
    res = CliRunner().invoke(app, ["explore-cost", "--bundle", str(tiny_pipeline / "bundle"), "--data",
                                   str(synthetic_dir), "--candidates", str(tiny_pipeline / "first_stage"),
                                   "--temperatures", "0.3,hot"])
    assert res.exit_code == 2 and "--temperatures" in res.output


def test_a_cold_policy_is_the_deterministic_student_when_nothing_ties():
    from contract.exploration import Exploration
    from experiments.exploration_cost import expected_ndcg

    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.normal(size=10)
        target = int(rng.integers(10))
        det = expected_ndcg(logits, target, None)[0]
        assert expected_ndcg(logits, target, Exploration(0.001))[0] == pytest.approx(det, abs=1e-9)
        assert expected_ndcg(logits, None, Exploration(1.0))[0] == 0.0
