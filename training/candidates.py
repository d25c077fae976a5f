"""A first stage's candidate lists as later stages read them, and the query samples they score.

Torch-free, so analysis commands (``hmpps headroom``) can read candidates
without loading the teacher's stack.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from training.artifacts import iter_jsonl, read_json, require_same_dataset
from training.dataset import Dataset


class Lines(Mapping[str, dict[str, Any]]):
    """``candidates.jsonl`` or ``holdout.jsonl`` lines by query id, held compactly: each candidate as a
    shared product-id string and a score instead of a dict of its own. A line is rebuilt as parsed when
    read. At 100,000 users a million lines as parsed dicts took the teacher to 7.9 GB."""

    def __init__(self, lines: Iterable[dict[str, Any]]):
        ids: dict[str, str] = {}
        self._lines: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[float, ...]]] = {}
        for line in lines:
            cands = line["candidates"]
            head = {sys.intern(k): v for k, v in line.items() if k != "candidates"}
            self._lines[line["query_id"]] = (head, tuple(ids.setdefault(c["product_id"], c["product_id"]) for c in cands),
                                             tuple(c["score"] for c in cands))

    def __getitem__(self, qid: str) -> dict[str, Any]:
        head, pids, scores = self._lines[qid]
        return head | {"candidates": [{"product_id": p, "score": s} for p, s in zip(pids, scores, strict=True)]}

    def __contains__(self, qid: object) -> bool:
        return qid in self._lines

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def ids(self, qid: str) -> list[str]:
        return list(self._lines[qid][1])


@dataclass
class FirstStage:
    dir: Path
    rows: Lines  # query_id -> candidates line
    model: str
    metrics: dict[str, Any] = field(default_factory=dict)
    # query_id -> holdout.jsonl line: a train query ranked by a model that never saw it (cross-fitting)
    holdout: Lines = field(default_factory=lambda: Lines([]))

    def ids(self, qid: str) -> list[str]:
        return self.rows.ids(qid)

    def _learn_from(self, qid: str) -> Lines:
        return self.holdout if qid in self.holdout else self.rows

    def line(self, qid: str) -> dict[str, Any]:
        """The list a reranker should learn from for this query: the holdout line of a train query when
        the first stage wrote one (ranked as a new query would be), else its candidates line."""
        return self._learn_from(qid)[qid]

    def list_ids(self, qid: str) -> list[str]:
        return self._learn_from(qid).ids(qid)


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
    rows = Lines(iter_jsonl(Path(path) / "candidates.jsonl"))
    holdout_path = Path(path) / "holdout.jsonl"
    holdout = Lines(iter_jsonl(holdout_path)) if holdout_path.is_file() else Lines([])
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
