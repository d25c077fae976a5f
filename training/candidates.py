"""A first stage's candidate lists as later stages read them, and the query samples they score.

Torch-free, so analysis commands (``hmpps headroom``) can read candidates
without loading the teacher's stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from training.artifacts import read_json, read_jsonl, require_same_dataset
from training.dataset import Dataset


@dataclass
class FirstStage:
    dir: Path
    rows: dict[str, dict[str, Any]]  # query_id -> candidates line
    model: str
    metrics: dict[str, Any] = field(default_factory=dict)
    # query_id -> holdout.jsonl line: a train query ranked by a model that never saw it (cross-fitting)
    holdout: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ids(self, qid: str) -> list[str]:
        return [c["product_id"] for c in self.rows[qid]["candidates"]]

    def line(self, qid: str) -> dict[str, Any]:
        """The list a reranker should learn from for this query: the holdout line of a train query when
        the first stage wrote one (ranked as a new query would be), else its candidates line."""
        return self.holdout.get(qid) or self.rows[qid]

    def list_ids(self, qid: str) -> list[str]:
        return [c["product_id"] for c in self.line(qid)["candidates"]]


def first_stage_info(path: Path, ds: Dataset) -> dict[str, Any]:
    """``retrieve.json`` of a first-stage output directory, checked to be of this dataset."""
    info_path = Path(path) / "retrieve.json"
    if not info_path.exists():
        raise InputError(f"{path} is not a first-stage output (retrieve.json missing); run 'hmpps retrieve' first")
    info = read_json(info_path)
    require_same_dataset(ds.fingerprint, info["dataset_fingerprint"], f"first-stage candidates in {path}")
    return info


def load_first_stage(path: Path, ds: Dataset) -> FirstStage:
    info = first_stage_info(path, ds)
    rows = {r["query_id"]: r for r in read_jsonl(Path(path) / "candidates.jsonl")}
    holdout_path = Path(path) / "holdout.jsonl"
    holdout = {r["query_id"]: r for r in read_jsonl(holdout_path)} if holdout_path.is_file() else {}
    return FirstStage(Path(path), rows, info["model"], read_json(Path(path) / "metrics.json"), holdout)


def sample_rows(rows: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    if fraction >= 1.0:
        return list(rows)
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(rows))))
    return [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False))]


def scored_test_rows(ds: Dataset, fs: FirstStage, fraction: float, seed: int) -> list[dict[str, Any]]:
    """The test queries a teacher with this ``test_fraction`` and ``seed`` scores; every comparison uses them."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"test_fraction={fraction}: must be in (0, 1]")
    rows = [r for r in ds.queries("test") if r["query_id"] in fs.rows]
    return sample_rows(rows, fraction, seed + 2)
