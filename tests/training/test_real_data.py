"""The real Amazon 2018 files in ../shared/data (skipped where absent)."""

import json

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from training.dataset import load_dataset

runner = CliRunner()
pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def magazine(amazon_2018, tmp_path_factory):
    out = tmp_path_factory.mktemp("mag") / "data"
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(amazon_2018 / "Magazine_Subscriptions.csv"),
                              "--meta", str(amazon_2018 / "meta_Magazine_Subscriptions.json.gz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_magazine_dataset(magazine):
    stats = json.loads((magazine / "stats.json").read_text())
    assert stats["parse"][0]["format"] == "ratings-csv-2018" and stats["parse"][1]["format"] == "meta-2018"
    assert stats["users"] > 200 and stats["products"] > 100 and stats["test_queries"] > 500
    ds = load_dataset(magazine)
    assert not any(p["title"].startswith("<") for p in ds.products.values()), "markup-junk titles are replaced"
    assert sum(p["title_source"] == "brand" for p in ds.products.values()) > 0.5 * len(ds.products)
    counts = {}
    for seq in ds.by_user().values():
        assert min(len(seq), 5) == 5, "5-core holds"
        for r in seq:
            counts[r["product_id"]] = counts.get(r["product_id"], 0) + 1
    assert min(counts.values()) >= 5


def test_magazine_hem_and_zam_beat_popularity(magazine, tmp_path):
    m = {}
    for model in ("pop", "hem", "zam"):
        res = runner.invoke(app, ["retrieve", "--data", str(magazine), "--model", model, "--out", str(tmp_path / model)])
        assert res.exit_code == 0, res.output
        m[model] = json.loads((tmp_path / model / "metrics.json").read_text())
    assert m["hem"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert m["zam"]["NDCG@4"] > m["pop"]["NDCG@4"]


def test_all_beauty_5core_reviews_without_metadata(amazon_2018, tmp_path):
    out = tmp_path / "beauty"
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(amazon_2018 / "All_Beauty_5.json.gz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "no product has a category path" in res.output
    ds = load_dataset(out)
    assert ds.meta["sources"][0]["format"] == "reviews-2014-2018"
    assert all(not p["has_meta"] for p in ds.products.values())
    assert all(r["query"] for r in ds.interactions)
