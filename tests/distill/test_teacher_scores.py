"""scripts/teacher_scores.py: the committed per-query scores file reproduces the figures it stands for."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "teacher_scores.py"


def _run(*args: str) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_export_then_figures_recompute_the_teachers_own_interval(tiny_pipeline: Path, synthetic_dir: Path,
                                                                 tmp_path: Path) -> None:
    teacher, student = tiny_pipeline / "teacher", tiny_pipeline / "distill"
    # a second teacher run cut after scoring part of its lists: only scores.partial.jsonl (resume key first)
    cut = tmp_path / "cut"
    cut.mkdir()
    lines = (teacher / "scores.jsonl").read_text().splitlines()
    test_lines = [x for x in lines if json.loads(x)["split"] == "test"]
    (cut / "scores.partial.jsonl").write_text("\n".join([json.dumps({"key": {}})] + test_lines[:-2]) + "\n")
    out = tmp_path / "scores.jsonl.gz"
    _run("export", "--data", str(synthetic_dir), "--teacher", str(teacher), "--student", f"student={student}",
         "--teacher-run", f"teacher_cut={cut}", "--out", str(out))

    with gzip.open(out, "rt") as f:
        rows = [json.loads(x) for x in f]
    info = json.loads((teacher / "teacher.json").read_text())
    assert len(rows) == info["scored_queries"]["test_total"]
    scored = [r for r in rows if r["scores"]]
    assert len(scored) == info["scored_queries"]["test"]
    for r in scored:  # one score per candidate for every model on the line
        assert all(len(v) == len(r["candidates"]) for v in r["scores"].values())
    assert sum("teacher_cut" in r["scores"] for r in scored) == len(scored) - 2

    # the default table leaves out the cut run (not on every line) and reproduces teacher.json's interval
    table = _run("figures", str(out))
    diff = info["versus_first_stage"]["diff"]
    teacher_row = next(line for line in table.splitlines() if line.startswith("| teacher |"))
    assert f"{diff:+.4f}" in teacher_row, (teacher_row, diff)
    assert "teacher_cut" not in table
    # naming the cut run compares it with the others on the lines it reached, and says so
    curve = _run("figures", str(out), "--models", "teacher_cut,teacher", "--pair", "teacher_cut:teacher")
    assert "2 scored lines without every model's scores left out" in curve
    assert "| teacher_cut |" in curve
    # --pair: the paired difference of two teachers is the difference of their NDCG@4 on the same lines
    ndcg = {n: float(next(x for x in curve.splitlines() if x.startswith(f"| {n} |")).split("|")[3])
            for n in ("teacher_cut", "teacher")}
    pair = next(x for x in curve.splitlines() if x.startswith("teacher_cut − teacher, NDCG@4: "))
    assert abs(float(pair.split(": ")[1].split()[0]) - (ndcg["teacher_cut"] - ndcg["teacher"])) <= 1.5e-4, pair


def test_figures_names_an_unknown_model(tiny_pipeline: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl.gz"
    _run("export", "--data", str(synthetic_dir), "--teacher", str(tiny_pipeline / "teacher"), "--out", str(out))
    res = subprocess.run([sys.executable, str(SCRIPT), "figures", str(out), "--models", "nobody"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode != 0
    assert "no scores named nobody" in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), "figures", str(out), "--pair", "teacher:nobody"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode != 0 and "no scores named nobody" in res.stderr
