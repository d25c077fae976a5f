"""Comparing teacher runs (training/teacher/compare.py) on the tiny pipeline's real scores and on crafted ones."""

from __future__ import annotations

import json
import shutil

import pytest

from training.errors import InputError
from training.teacher.compare import brand_preference, load_scored, synthetic_truth, versus


def test_a_run_against_itself_and_against_a_reordered_copy(tiny_pipeline, tmp_path):
    rows, n = load_scored(tiny_pipeline)
    same = versus(rows, n, rows, n)
    assert same["diff"] == 0 and same["wins"] == same["losses"] == 0 and same["n"] == n
    # a copy whose teacher puts every target first can only win
    best = json.loads(json.dumps(rows))
    for s in best:
        for c in s["candidates"]:
            c["teacher_score"] = 1.0 if c["product_id"] == s["target"] else 0.0
    up = versus(best, n, rows, n)
    assert up["losses"] == 0 and up["diff"] >= 0 and up["ci95"][0] <= up["diff"] <= up["ci95"][1]
    other = [s for s in rows if s["split"] == "test"][1:]
    with pytest.raises(InputError, match="different test queries"):
        versus(other, n, rows, n)
    shutil.copytree(tiny_pipeline / "teacher", tmp_path / "run" / "teacher")
    (tmp_path / "run" / "teacher" / "scores.jsonl").unlink()
    with pytest.raises(InputError, match="no teacher/scores.jsonl"):
        load_scored(tmp_path / "run")


def test_brand_preference_finds_a_teacher_that_favours_the_users_brand(tiny_pipeline, synthetic_dir):
    users, products = synthetic_truth(synthetic_dir)
    rows, _ = load_scored(tiny_pipeline)
    crafted = json.loads(json.dumps(rows))
    favourite = 0
    for s in crafted:
        for c in s["candidates"]:
            fav = products[c["product_id"]]["extra"]["truth"]["brand"] == users[s["user_id"]]["brand"]
            favourite += fav and s["split"] == "test"
            c["teacher_logit"] = 1.0 if fav else 0.0
    pref = brand_preference(crafted, products, users)
    assert pref["named_in_text"]["candidates"] + pref["picture_only"]["candidates"] == favourite > 0
    assert all(v["mean"] > 0 for v in pref.values() if v["candidates"])
    for s in crafted:  # the opposite teacher
        for c in s["candidates"]:
            c["teacher_logit"] = 1.0 - c["teacher_logit"]
    assert all(v["mean"] < 0 for v in brand_preference(crafted, products, users).values() if v["candidates"])
    assert synthetic_truth(tiny_pipeline) is None  # no generator records: no preference to check
