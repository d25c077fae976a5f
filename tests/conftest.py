"""Shared fixtures. Expensive artifacts are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.needs import need

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("HMPPS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def amazon_2018() -> Path:
    d = shared_data_dir() / "amazon-2018"
    if not (d / "Magazine_Subscriptions.csv").exists():
        need(False, f"real Amazon data not found at {d} (set HMPPS_SHARED_DATA to the shared/data folder)")
    return d


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (fast enough for every CI run), built the way a shop's data is:
    own-data files whose purchases carry the text their buyers searched, read by ``hmpps data events``."""
    from typer.testing import CliRunner

    from hmpps.cli import app

    root = tmp_path_factory.mktemp("synthetic")
    runner = CliRunner()
    made = runner.invoke(app, ["data", "synthetic", "--users", "160", "--products", "120", "--seed", "7",
                               "--format", "events", "--queries", "search", "--out", str(root / "source")])
    assert made.exit_code == 0, made.output
    built = runner.invoke(app, ["data", "events", "--products", str(root / "source" / "products.jsonl.gz"),
                                "--events", str(root / "source" / "events.jsonl.gz"), "--out", str(root / "data"),
                                "--name", "synthetic-s7"])
    assert built.exit_code == 0, built.output
    return root / "data"


@pytest.fixture(scope="session")
def tiny_pipeline(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hmpps pipeline --profile tiny`` once per session: first stage, teacher, student bundle."""
    from typer.testing import CliRunner

    from hmpps.cli import app

    out = tmp_path_factory.mktemp("pipeline") / "pipe"
    res = CliRunner().invoke(app, ["pipeline", "--data", str(synthetic_dir), "--first-stage", "hem", "--profile", "tiny",
                                   "--out", str(out), "--set", "train_fraction=0.15", "--set", "score_train_fraction=0.3"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def bundle_dir(tiny_pipeline: Path) -> Path:
    return tiny_pipeline / "bundle"
