"""``hmpps bench-offline`` at its smallest size (a smoke test: no timing asserted), its budgets and its resume."""

from __future__ import annotations

import json
import sys

from typer.testing import CliRunner

from hmpps.cli import app
from hmpps.offline_bench import STAGES, parse_sizes, run_stage


def test_the_smallest_shop_runs_every_stage_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "bench"
    args = ["bench-offline", "--sizes", "120", "--out", str(out), "--teacher-train-queries", "20",
            "--teacher-scored-queries", "40"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "bench_offline.json").read_text())
    assert [r["stage"] for r in rep["results"]] == list(STAGES)
    assert all(r["status"] == "ok" and r["seconds"] > 0 and r["peak_mb"] > 0 for r in rep["results"]), rep["results"]
    assert (out / "shop_120" / "distill" / "bundle" / "manifest.json").is_file()
    assert (out / "bench_offline.png").stat().st_size > 0 and "| 120 |" in (out / "report.md").read_text()
    again = CliRunner().invoke(app, args)  # every stage finished: nothing runs again
    assert again.exit_code == 0, again.output
    assert json.loads((out / "bench_offline.json").read_text())["results"] == rep["results"]


def test_a_stage_past_its_budget_is_stopped_not_waited_for(tmp_path):
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    status, seconds, _, detail = run_stage(slow, tmp_path / "slow.log", budget_s=0.5, budget_mb=10_000)
    assert status == "stopped: time" and seconds < 5 and "over" in detail
    hungry = [sys.executable, "-c", "x = bytearray(400 * 2**20); import time; time.sleep(30)"]
    status, seconds, peak, _ = run_stage(hungry, tmp_path / "hungry.log", budget_s=60, budget_mb=200)
    assert status == "stopped: memory" and seconds < 20 and peak > 200
    # a worker in a session of its own (as torchrun starts them under accelerate launch) still counts
    detached = [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                "'x = bytearray(400 * 2**20); import time; time.sleep(30)'], start_new_session=True)"]
    status, seconds, peak, _ = run_stage(detached, tmp_path / "detached.log", budget_s=60, budget_mb=200)
    assert status == "stopped: memory" and seconds < 20 and peak > 200
    failing = [sys.executable, "-c", "raise SystemExit('no such dataset')"]
    status, _, _, detail = run_stage(failing, tmp_path / "failing.log", budget_s=60, budget_mb=10_000)
    assert status == "failed" and "no such dataset" in detail


def test_sizes_are_parsed_and_bad_ones_named():
    assert parse_sizes("20k,2000,1m") == (2000, 20_000, 1_000_000)
    res = CliRunner().invoke(app, ["bench-offline", "--sizes", "big"])
    assert res.exit_code == 2 and "size 'big'" in res.output


def test_exponents_and_the_projection_follow_the_measured_points():
    """A stage whose time grows as users^1.5 gets exponent 1.5 and a projection t(n0) (n / n0)^1.5 from
    its largest finished size; a stage that never finished twice gets neither."""
    from hmpps.offline_bench import StageResult, extrapolate, fit_exponents

    results = [StageResult("hem", n, n // 5, "ok", 2.0 * (n / 1000) ** 1.5, 100.0) for n in (1000, 4000, 16000)]
    results.append(StageResult("distill", 1000, 200, "ok", 10.0, 100.0))
    results.append(StageResult("distill", 4000, 800, "stopped: memory", 5.0, 9000.0))
    fits = fit_exponents(results)
    assert set(fits) == {"hem"} and abs(fits["hem"]["time_exponent"] - 1.5) < 1e-9
    proj = extrapolate(results, fits, sizes=(16000, 160_000))
    assert set(proj["hem"]) == {160_000}  # only beyond what was measured
    assert abs(proj["hem"][160_000] - 2.0 * 160 ** 1.5) < 1e-6
