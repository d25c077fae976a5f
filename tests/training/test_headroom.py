"""hmpps headroom: model-free reference rerankers over real first-stage candidates."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from training.candidates import load_first_stage, scored_test_rows
from training.dataset import load_dataset
from training.headroom import headroom, headroom_table, reader_scores, vision_by_history
from training.metrics import paper_metrics
from training.synthetic import SyntheticConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def bm25(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("headroom") / "bm25"
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "bm25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_reference_rerankers_on_synthetic_truth(synthetic_dir, bm25):
    result = headroom(synthetic_dir, bm25)
    m = result["metrics"]
    assert list(m) == ["first stage (bm25)", "random order (expected)", "already bought last",
                       "popularity within the candidates", "history preferences (text)",
                       "history preferences (text + image)", "true preferences"]
    ds = load_dataset(synthetic_dir)
    fs = load_first_stage(bm25, ds)
    rows = scored_test_rows(ds, fs, 1.0, 0)
    # the first row is the first stage itself, recomputed
    assert m["first stage (bm25)"]["NDCG@4"] == pytest.approx(
        paper_metrics([fs.ids(r["query_id"]) for r in rows], [r["product_id"] for r in rows])["NDCG@4"])
    bought = sum(p in set(ds.history(r)) for r in rows for p in fs.ids(r["query_id"]))
    assert result["stats"]["candidates_already_bought"] == pytest.approx(bought / sum(len(fs.ids(r["query_id"])) for r in rows))
    # the generator never sells a product twice to one user: demoting repeats cannot lose a target
    assert result["stats"]["targets_already_bought"] == 0.0
    assert m["already bought last"]["NDCG@4"] >= m["first stage (bm25)"]["NDCG@4"]
    # chance level over the same lists: the mean over each list's ranks, computed here the long way
    ndcg = [sum(1 / math.log2(i + 2) for i in range(min(4, len(ids)))) / len(ids) if t in ids else 0.0
            for ids, t in ((fs.ids(r["query_id"]), r["product_id"]) for r in rows)]
    assert m["random order (expected)"]["NDCG@4"] == pytest.approx(sum(ndcg) / len(rows))
    # the latent preferences decide purchases, so knowing them must beat guessing them from text
    assert m["true preferences"]["NDCG@4"] > m["history preferences (text)"]["NDCG@4"] > m["first stage (bm25)"]["NDCG@4"]
    # the vision rows: a reader of the whole history is the headroom's own pair of rows
    whole = result["vision_by_history"][-1]
    assert [v["history"] for v in result["vision_by_history"]] == [2, 3, 5, 7, "all"]
    assert whole["text"] == m["history preferences (text)"]["NDCG@4"]
    assert whole["text_image"] == m["history preferences (text + image)"]["NDCG@4"]
    d = whole["image_minus_text"]
    assert d["diff"] == pytest.approx(whole["text_image"] - whole["text"]) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    longest = max(len(ds.history(r)) for r in rows)
    assert vision_by_history(ds, fs, rows, [longest])[0]["text"] == whole["text"]  # k past every history: all of it
    assert "| all |" in headroom_table(result)


def test_a_reader_sees_only_the_history_it_is_given(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    truth = {pid: p["extra"]["truth"] for pid, p in ds.products.items()}
    w = SyntheticConfig()
    # a history item and a candidate that share only the brand, which both name in their text
    pairs = [(h, c) for h in truth for c in truth if h != c and truth[h]["brand_in_text"] and truth[c]["brand_in_text"]
             and truth[h]["brand"] == truth[c]["brand"]
             and all(truth[h][k] != truth[c][k] for k in ("colour", "style"))]
    h, c = pairs[0]
    assert reader_scores(ds, [[h]], [c], text_only=True) == [pytest.approx(w.w_brand)]
    assert reader_scores(ds, [[]], [c], text_only=False) == [0.0]  # no history, nothing to match
    # the same item bought before goes last, whatever it matches
    assert reader_scores(ds, [[c]], [c], text_only=False)[0] < 0
    # a brand only the picture shows counts for a reader of the image, never for a text-only one
    hidden = [(h, c) for h in truth for c in truth if h != c and not truth[c]["brand_in_text"]
              and truth[h]["brand"] == truth[c]["brand"] and all(truth[h][k] != truth[c][k] for k in ("colour", "style"))]
    h, c = hidden[0]
    assert reader_scores(ds, [[h]], [c], text_only=True) == [0.0]
    assert reader_scores(ds, [[h]], [c], text_only=False) == [pytest.approx(w.w_brand)]
    # per candidate: each reads its own history
    assert reader_scores(ds, [[h], []], [c, c], text_only=False) == [pytest.approx(w.w_brand), 0.0]


def test_real_data_gets_only_the_model_free_rows_and_the_cli_writes_a_report(synthetic_dir, bm25, tmp_path):
    # without the generator's truth file the dataset looks like real data
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    (data / "users_truth.jsonl").unlink()
    res = runner.invoke(app, ["headroom", "--data", str(data), "--candidates", str(bm25), "--test-fraction", "0.5",
                              "--out", str(tmp_path / "hr")])
    assert res.exit_code == 0, res.output
    assert "already bought last" in res.output and "true preferences" not in res.output
    report = (tmp_path / "hr" / "report.md").read_text()
    assert "| first stage (bm25) |" in report and "test_fraction 0.5" in report


def test_headroom_names_bad_input(synthetic_dir, bm25, tmp_path):
    res = runner.invoke(app, ["headroom", "--data", str(synthetic_dir), "--candidates", str(bm25), "--test-fraction", "0",
                              "--out", str(tmp_path / "hr")])
    assert res.exit_code == 2 and "test_fraction=0.0" in res.output
    assert not (tmp_path / "hr").exists()
    res = runner.invoke(app, ["headroom", "--data", str(synthetic_dir), "--candidates", str(tmp_path)])
    assert res.exit_code == 2 and "retrieve.json missing" in res.output


def test_popularity_rule_puts_the_most_bought_first_and_bought_ones_last(synthetic_dir, bm25):
    from collections import Counter

    from training.headroom import reference_lists

    ds = load_dataset(synthetic_dir)
    fs = load_first_stage(bm25, ds)
    rows = scored_test_rows(ds, fs, 1.0, 0)[:40]
    counts = Counter(r["product_id"] for r in ds.interactions if r["split"] == "train")
    lists = reference_lists(ds, fs, rows)["popularity within the candidates"]
    for row, ranked in zip(rows, lists, strict=True):
        seen = set(ds.history(row))
        key = [(p in seen, -counts[p]) for p in ranked]
        assert key == sorted(key) and sorted(ranked) == sorted(fs.ids(row["query_id"]))
