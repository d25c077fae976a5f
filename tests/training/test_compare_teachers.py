"""Comparing teacher runs (training/teacher/compare.py) on the tiny pipeline's real scores and on crafted ones."""

from __future__ import annotations

import json
import shutil

import pytest

from contract.errors import InputError
from training.dataset import load_dataset
from training.headroom import headroom
from training.metrics import paired_bootstrap
from training.teacher.compare import (
    bought_before,
    bought_last,
    load_scored,
    preferences,
    prompt_readers,
    repeats_in_prompt,
    synthetic_truth,
    versus,
)
from training.teacher.run import ranked_test_lists


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


def _with_logits(rows, logit):
    """A copy of scored queries whose teacher logit (and score) is logit(query, candidate)."""
    out = json.loads(json.dumps(rows))
    for s in out:
        for c in s["candidates"]:
            c["teacher_logit"] = c["teacher_score"] = logit(s, c)
    return out


def test_preferences_recover_a_crafted_teachers_weights(tiny_pipeline, synthetic_dir):
    ds = load_dataset(synthetic_dir)
    truth, before = synthetic_truth(ds), bought_before(ds)
    rows, _ = load_scored(tiny_pipeline)

    def attr(s, c, user_key, product_key):
        return truth.products[c["product_id"]]["extra"]["truth"][product_key] == truth.users[s["user_id"]][user_key]

    def bought(s, c):
        return c["product_id"] in before.get(s["query_id"], set())

    # a teacher that is exactly 2 x (user's brand) + 1 x (user's colour) - 3 x (bought before)
    crafted = _with_logits(rows, lambda s, c: 2.0 * attr(s, c, "brand", "brand") + attr(s, c, "colour", "colour")
                           - 3.0 * bought(s, c))
    pref = preferences(crafted, truth, before)
    expected = {"brand": 2.0, "colour": 1.0, "brand2": 0.0, "style": 0.0}
    for name, weight in expected.items():
        for where, v in pref[name].items():
            if v["candidates"]:
                assert v["coef"] == pytest.approx(weight, abs=1e-3), (name, where, v)
    assert pref["controls"]["already_bought"] == pytest.approx(-3.0, abs=1e-3)
    assert pref["controls"]["log_train_purchases"] == pytest.approx(0.0, abs=1e-3)
    test_queries = [s for s in rows if s["split"] == "test"]
    favourite = sum(attr(s, c, "brand", "brand") for s in test_queries for c in s["candidates"])
    assert sum(v["candidates"] for v in pref["brand"].values()) == favourite > 0
    assert pref["brand"]["named_in_text"]["mean"] > 0  # its plain mean is positive too
    # the opposite teacher: every effect flips
    flipped = preferences(_with_logits(crafted, lambda s, c: -c["teacher_logit"]), truth, before)
    assert flipped["brand"]["named_in_text"]["coef"] == pytest.approx(-2.0, abs=1e-3)
    assert flipped["controls"]["already_bought"] == pytest.approx(3.0, abs=1e-3)
    # what the data rewards: the target's own indicator, whatever the teacher said
    reward = preferences(rows, truth, before, reward=True)
    target_only = preferences(_with_logits(rows, lambda s, c: float(c["product_id"] == s["target"])), truth, before)
    assert reward == target_only
    assert reward["controls"]["already_bought"] < 0  # the generator never sells a product twice to one user


def test_no_generator_records_means_no_truth(synthetic_dir, tmp_path):
    shutil.copytree(synthetic_dir, tmp_path / "data")
    (tmp_path / "data" / "users_truth.jsonl").unlink()  # what a real dataset looks like to compare.py
    assert synthetic_truth(load_dataset(tmp_path / "data")) is None


def test_bought_last_puts_repeats_last_and_keeps_each_groups_order(tiny_pipeline, synthetic_dir):
    ds = load_dataset(synthetic_dir)
    bought = bought_before(ds)
    rows, n = load_scored(tiny_pipeline)
    last = bought_last(rows, bought)
    repeats = 0
    for before, after in zip(rows, last, strict=True):
        seen = bought.get(before["query_id"], set())
        order = [c["product_id"] for c in sorted(after["candidates"], key=lambda c: -c["teacher_score"])]
        flags = [p in seen for p in order]
        assert flags == sorted(flags)  # every repeat after every new product
        repeats += sum(flags)
        old = [c["product_id"] for c in sorted(before["candidates"], key=lambda c: -c["teacher_score"])]
        assert [p for p in order if p not in seen] == [p for p in old if p not in seen]
        assert [p for p in order if p in seen] == [p for p in old if p in seen]
    assert repeats > 0
    # no test target was bought before, so the rule can only help the first stage, never hurt it
    fs_last = bought_last(rows, bought, key="first_stage_score")
    d = paired_bootstrap(ranked_test_lists(fs_last, n, "first_stage_score")[0], ranked_test_lists(rows, n, "first_stage_score")[0],
                         ranked_test_lists(rows, n, "first_stage_score")[2])
    assert d["losses"] == 0 and d["wins"] > 0
    # the teacher measured against that reordered first stage, as compare_teachers.py prints it
    assert versus(last, n, fs_last, n, ref_key="first_stage_score")["n"] == n


def test_repeats_in_prompt_counts_the_repeats_whose_own_item_is_selected(tiny_pipeline, synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    bought = bought_before(ds)
    rows, _ = load_scored(tiny_pipeline)
    repeats = sum(c["product_id"] in bought.get(s["query_id"], set())
                  for s in rows if s["split"] == "test" for c in s["candidates"])
    seen = repeats_in_prompt(tiny_pipeline, ds, rows, bought)
    assert seen["repeats"] == repeats > 0
    assert 0 <= seen["same_item_in_prompt"] <= repeats
    # with K_s2 above every history's length, selection keeps the whole history: every repeat is in its prompt
    run = tmp_path / "run"
    shutil.copytree(tiny_pipeline / "teacher", run / "teacher")
    info = json.loads((run / "teacher" / "teacher.json").read_text())
    info["config"]["k_s2"] = 1000
    (run / "teacher" / "teacher.json").write_text(json.dumps(info))
    assert repeats_in_prompt(run, ds, rows, bought)["same_item_in_prompt"] == repeats
    shutil.rmtree(run / "teacher" / "embeddings")
    assert repeats_in_prompt(run, ds, rows, bought) is None


def test_prompt_readers_over_a_whole_history_prompt_equal_the_headroom_rows(tiny_pipeline, synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    rows, n = load_scored(tiny_pipeline)
    read = prompt_readers(tiny_pipeline, ds, rows, n)
    assert read["k_s2"] == 2 and read["image_minus_text"]["n"] == n
    assert read["image_minus_text"]["diff"] == pytest.approx(read["text_image"] - read["text"])
    # with K_s2 above every history's length each prompt holds the whole history: the headroom's own rows,
    # which reach the same test queries another way (the first stage's lists, not the teacher's scores)
    run = tmp_path / "run"
    shutil.copytree(tiny_pipeline / "teacher", run / "teacher")
    info = json.loads((run / "teacher" / "teacher.json").read_text())
    info["config"]["k_s2"] = 1000
    (run / "teacher" / "teacher.json").write_text(json.dumps(info))
    whole = prompt_readers(run, ds, rows, n)
    ref = headroom(synthetic_dir, tiny_pipeline / "first_stage", info["config"]["test_fraction"], info["config"]["seed"])
    assert whole["text"] == pytest.approx(ref["metrics"]["history preferences (text)"]["NDCG@4"])
    assert whole["text_image"] == pytest.approx(ref["metrics"]["history preferences (text + image)"]["NDCG@4"])
    # two selected items carry less of the history than all of it
    assert read["text_image"] != whole["text_image"]
    shutil.rmtree(run / "teacher" / "embeddings")
    assert prompt_readers(run, ds, rows, n) is None
