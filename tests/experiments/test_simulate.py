"""A short run of the whole learning loop: real service processes over HTTP, a real (embedded) Redis,
from-logs, retraining with propensity weights, and both A/B reports."""

from __future__ import annotations

import pytest

from contract.bundle import verify_bundle
from experiments.simulate import SimConfig, SimInputs, simulate

pytestmark = pytest.mark.loop


def test_a_short_simulation_closes_the_loop(tiny_pipeline, synthetic_dir, tmp_path):
    inputs = SimInputs(tiny_pipeline / "bundle", synthetic_dir, tiny_pipeline / "first_stage")
    out = tmp_path / "sim"
    s = simulate(inputs, out, SimConfig(requests_per_phase=150, seed=1), {"epochs": 2, "val_fraction": 0.2})
    for phase in ("a", "c"):
        ph = s["phases"][phase]
        assert ph["requests"] == 150 and ph["errors"] == 0 and not ph["timed_out"]
        assert ph["clicks"] > 0
    # every request of phase (a) was logged, shown, and read back; only phase (a)'s
    assert s["from_logs"]["rankings"] == 150 and s["from_logs"]["shown"] == 150
    assert s["from_logs"]["labels"]["positive"] > 0
    assert set(s["ab"]["a"]["arms"]) == {"control", "student"}
    assert set(s["ab"]["c"]["arms"]) == {"current", "retrained"}
    assert s["ab"]["a"]["queries"] == 150 and s["ab"]["c"]["queries"] == 150
    # the student puts more relevant items on top than the caller's order, by the simulator's ground truth
    top3 = s["phases"]["a"]["mean_relevance_top3"]
    assert set(top3) == {"control", "student"}
    assert top3["student"] > top3["control"], top3
    new = verify_bundle(out / "phase_b" / "retrained" / "bundle")
    assert new.version == s["retrain"]["bundle_version"] != verify_bundle(inputs.bundle).version
    assert new.extra["retrained_from"] == verify_bundle(inputs.bundle).version
    off = s["retrain"]["offline"]
    assert set(off["NDCG@4"]) == {"first stage", "current", "retrained"} and off["queries"] > 0
    # the inputs rebuilt from the logs are the service's: replaying the serving arm gives the served order
    same, checked = s["paired_replay_c"]["replay_matches_served"]
    assert checked >= 140 and same == checked
    report = (out / "report.md").read_text()
    assert "Phase (a)" in report and "Phase (c)" in report and "propensity" in report
    assert (out / "phase_b" / "logs" / "ctr_by_position.png").is_file()
    assert not (out / "redis").exists()
