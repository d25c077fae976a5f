"""The paper's Office dataset, end to end on a slice: own-data reader, HEM with its holdout lists,
tiny teacher, student with every ranking signal, and the report against the model-free rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from tests.conftest import shared_data_dir
from tests.needs import need

pytestmark = pytest.mark.office  # about 80 s: its own target, make test-office (in .ci/run)

USERS = 200


@pytest.fixture(scope="module")
def office_slice(tmp_path_factory) -> Path:
    src = shared_data_dir() / "amazon-2014-office"
    if not (src / "events.jsonl.gz").exists():
        need(False, f"the Office dataset is not at {src} (set HMPPS_SHARED_DATA to the shared/data folder)")
    root = tmp_path_factory.mktemp("office")
    with gzip.open(src / "events.jsonl.gz", "rt") as f:
        events = [json.loads(line) for line in f]
    users = sorted({e["user_id"] for e in events}, key=lambda u: int(u) if u.isdigit() else u)[:USERS]
    keep = set(users)
    with gzip.open(root / "events.jsonl.gz", "wt") as f:
        for e in events:
            if e["user_id"] in keep:
                f.write(json.dumps(e) + "\n")
    res = CliRunner().invoke(app, ["data", "events", "--products", str(src / "products.jsonl.gz"),
                                   "--events", str(root / "events.jsonl.gz"), "--min-core", "2",
                                   "--name", "office-slice", "--out", str(root / "data")])
    assert res.exit_code == 0, res.output
    return root / "data"


def test_office_slice_pipeline_reports_the_student_against_the_rules(office_slice, tmp_path):
    stats = json.loads((office_slice / "stats.json").read_text())
    assert 0 < stats["users"] <= USERS
    out = tmp_path / "pipe"
    res = CliRunner().invoke(app, ["pipeline", "--data", str(office_slice), "--first-stage", "hem", "--profile", "tiny",
                                   "--out", str(out), "--set", "train_fraction=0.1", "--set", "score_train_fraction=0.1",
                                   "--set", "epochs=1"])
    assert res.exit_code == 0, res.output
    holdout = [json.loads(x) for x in (out / "first_stage" / "holdout.jsonl").read_text().splitlines()]
    assert holdout and all(not h["fit"] and h["split"] == "train" for h in holdout)
    distill = json.loads((out / "distill" / "distill.json").read_text())
    assert "holdout" in distill["train_source"] and distill["train_queries"] == len(holdout)
    rules = json.loads((out / "metrics.json").read_text())["versus_rules"]
    names = set(rules["rows"])
    assert {"chance (random order, expected)", "already bought last", "popularity within the candidates",
            "HMPPS teacher", "ONNX student"} <= names
    base = rules["rows"][rules["first_stage"]]["metrics"]["NDCG@4"]
    for name, row in rules["rows"].items():
        vs = row["versus_first_stage"]
        # the paired difference is the difference of the means, and its interval holds it
        assert vs["diff"] == pytest.approx(row["metrics"]["NDCG@4"] - base, abs=1e-9), name
        assert vs["ci95"][0] <= vs["diff"] <= vs["ci95"][1], name
    # the report's student row is the pipeline's student metric
    student = json.loads((out / "metrics.json").read_text())["student"]
    assert rules["rows"]["ONNX student"]["metrics"]["NDCG@4"] == pytest.approx(student["NDCG@4"], abs=1e-9)
    assert "Against chance and the model-free rules" in (out / "report.md").read_text()
