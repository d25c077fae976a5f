"""Comparing finished teacher runs: paired NDCG@4, and whether a teacher favours the user's brand.

The second needs the synthetic generator's truth (``users_truth.jsonl`` and
``extra.truth`` on products): per test query, the logit of a candidate of the
user's favourite brand minus the query's mean logit, averaged, split by whether
the candidate's text names its brand or only its picture shows it. Positive
means the teacher ranks the user's brand up; it is what a vision teacher must
learn before it can beat a text-only one (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.artifacts import read_json, read_jsonl
from training.dataset import load_dataset
from training.errors import InputError
from training.metrics import paired_bootstrap
from training.teacher.run import test_lists


def load_scored(run: Path) -> tuple[list[dict[str, Any]], int]:
    """A pipeline output's scored queries and how many test queries its sample had."""
    teacher = run / "teacher"
    for name in ("teacher.json", "scores.jsonl"):
        if not (teacher / name).is_file():
            raise InputError(f"{run}: no teacher/{name}; pass a finished `hmpps pipeline` output directory")
    info = read_json(teacher / "teacher.json")
    return read_jsonl(teacher / "scores.jsonl"), int(info["scored_queries"]["test_total"])


def synthetic_truth(data: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(users by id, products by id) of a synthetic dataset, from the generator's records; None on real data."""
    users_path = Path(data) / "users_truth.jsonl"
    if not users_path.exists():
        return None
    return {u["user_id"]: u for u in read_jsonl(users_path)}, load_dataset(data).products


def versus(rows: list[dict[str, Any]], n: int, ref_rows: list[dict[str, Any]], ref_n: int) -> dict[str, Any]:
    """Paired bootstrap of NDCG@4, one run minus a reference, over the test queries both scored."""
    ranked, _, targets = test_lists(rows, n, "teacher_score")
    ref_ranked, _, ref_targets = test_lists(ref_rows, ref_n, "teacher_score")
    if targets != ref_targets:
        raise InputError("the runs were scored on different test queries; compare runs of one test sample")
    return paired_bootstrap(ranked, ref_ranked, targets)


def brand_preference(scored: list[dict[str, Any]], products: dict[str, Any], users: dict[str, Any]) -> dict[str, Any]:
    """Mean (logit - query mean logit) of the user's-favourite-brand candidates, by where the brand shows."""
    out: dict[str, list[float]] = {"named_in_text": [], "picture_only": []}
    for s in scored:
        if s["split"] != "test" or s["user_id"] not in users:
            continue
        mean = float(np.mean([c["teacher_logit"] for c in s["candidates"]]))
        for c in s["candidates"]:
            truth = products[c["product_id"]]["extra"]["truth"]
            if truth["brand"] == users[s["user_id"]]["brand"]:
                out["named_in_text" if truth["brand_in_text"] else "picture_only"].append(c["teacher_logit"] - mean)
    return {k: {"mean": round(float(np.mean(v)), 4) if v else None, "candidates": len(v)} for k, v in out.items()}
