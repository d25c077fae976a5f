"""The two simulator experiments on a small budget: interleaving vs A/B, and OPE against the served truth.

Real service processes over HTTP and an embedded Redis, as ``hmpps simulate``; the estimators' and the
verdict's correctness on known answers is in test_ope.py and test_interleaving_verdict.py.
"""

from __future__ import annotations

import math

import pytest

from experiments.ope import ESTIMATORS
from experiments.simulate import SimConfig, SimInputs
from experiments.trials import TrialConfig, run_trials

pytestmark = pytest.mark.loop


@pytest.fixture(scope="module")
def inputs(tiny_pipeline, synthetic_dir):
    return SimInputs(tiny_pipeline / "bundle", synthetic_dir, tiny_pipeline / "first_stage", tiny_pipeline / "teacher")


def test_interleaving_and_ab_verdicts_on_one_traffic(inputs, tmp_path):
    s = run_trials("interleaving", inputs, tmp_path / "il", SimConfig(), TrialConfig(seeds=1, requests=400, step=50))
    (seed,) = s["seeds"]
    assert seed["requests"] == 400 and seed["errors"] == 0
    il, ab = seed["interleaving"], seed["ab"]
    assert il["teams"] == ["strong", "weak"] and il["requests"] + ab["requests"] == 400
    assert il["decided"] + il["ties"] == il["requests"] and il["decided"] > 0
    assert set(seed["relevance_top3"]) == {"ab-strong", "ab-weak", "il"}
    assert (tmp_path / "il" / "report.md").read_text().startswith("# Interleaving vs an A/B test")
    assert (tmp_path / "il_weak_student" / "bundle" / "manifest.json").is_file()  # distilled from the teacher


def test_ope_estimates_every_student_from_exploration_logs(inputs, tmp_path):
    tc = TrialConfig(seeds=1, ope_requests=200, truth_requests=80, resamples=200)
    s = run_trials("ope", inputs, tmp_path / "ope", SimConfig(), tc, retrain_overrides={"epochs": 2})
    (seed,) = s["seeds"]
    assert seed["logged_requests"] == 200 and seed["logged_errors"] == 0
    for student in ("retrained", "shipped", "weak"):
        assert set(seed["estimates"][student]) == set(ESTIMATORS) | {"logging policy (on-policy)"}
        assert math.isfinite(seed["truth"][student]) and seed["truth"][student] > 0
        pbm = seed["estimates"][student]["PBM-IPS"]
        assert pbm["value"] >= 0 and pbm["ci95"][0] <= pbm["value"] <= pbm["ci95"][1]
    # the logging policy's own clicks per request estimate what the exploring arm really got
    on = seed["estimates"]["retrained"]["logging policy (on-policy)"]
    assert abs(on["value"] - seed["explored_expected_clicks"]) < 0.25 * seed["explored_expected_clicks"]
    assert set(s["summary"]) == set(ESTIMATORS)
    assert "Off-policy evaluation against the simulator's truth" in (tmp_path / "ope" / "report.md").read_text()
