"""Every accepted input format, from tiny crafted files with malformed lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from training.amazon import detect_interactions_format, detect_meta_format, read_interactions, read_meta
from training.dataset import load_dataset

runner = CliRunner()
USERS = [f"U{i}" for i in range(6)]
ITEMS = [f"B{i:03d}" for i in range(6)]


def _purchases():
    # 6 users x 5 items each: survives 5-core on both sides
    for u, user in enumerate(USERS):
        for k in range(5):
            yield user, ITEMS[(u + k) % 6], 1_500_000_000 + u * 1000 + k * 86400


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


MALFORMED = ["{not json", '{"reviewerID": "U0"}', "", "[1, 2, 3]"]


def reviews_2014_2018(tmp: Path) -> Path:
    lines = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}) for u, i, t in _purchases()]
    return _write(tmp / "reviews_5.json.gz", lines[:3] + MALFORMED + lines[3:], gz=True)


def meta_2014(tmp: Path) -> Path:
    lines = [repr({"asin": i, "title": f"Desk Lamp {i}", "categories": [["Office Products"], ["Office Products", "Lighting", "Desk Lamps"]],
                   "imUrl": f"http://img/{i}.jpg", "description": "A <b>bright</b> lamp &amp; more"}) for i in ITEMS[:5]]
    return _write(tmp / "meta.json.gz", lines + ["{'asin': 'BROKEN'", "not a dict at all"], gz=True)


def ratings_2018(tmp: Path) -> Path:
    lines = [f"{i},{u},5.0,{t}" for u, i, t in _purchases()]
    return _write(tmp / "ratings.csv", lines + ["B000,U0,5.0,notatime", "too,few"])


def meta_2018(tmp: Path) -> Path:
    lines = [json.dumps({"asin": i, "title": '<span class="a-size-medium a-color-secondary"', "brand": f"Brand {i}",
                         "category": ["Magazine Subscriptions", "Sports &amp; Leisure"], "main_cat": "Magazine Subscriptions",
                         "description": ["Great <i>magazine</i>."], "imageURLHighRes": [f"http://img/{i}.jpg"]}) for i in ITEMS[:4]]
    lines.append(json.dumps({"asin": ITEMS[4], "title": "No Category Magazine", "category": [], "main_cat": "Books"}))
    return _write(tmp / "meta.json", lines + ["{broken"])


def reviews_2023(tmp: Path) -> Path:
    lines = [json.dumps({"user_id": u, "parent_asin": i, "asin": i + "X", "timestamp": t * 1000, "rating": 5}) for u, i, t in _purchases()]
    return _write(tmp / "reviews.jsonl", lines + ['{"user_id": "U1", "parent_asin": "B001"}', "garbage"])


def ratings_2023(tmp: Path) -> Path:
    lines = ["user_id,parent_asin,rating,timestamp"] + [f"{u},{i},5.0,{t * 1000}" for u, i, t in _purchases()]
    return _write(tmp / "ratings_2023.csv", lines + ["U9,,5.0,1"])


def meta_2023(tmp: Path) -> Path:
    lines = [json.dumps({"parent_asin": i, "title": f"Yoga Mat {i}", "main_category": "Sports", "store": "Zen Co",
                         "categories": ["Sports & Outdoors", "Exercise", "Yoga"], "description": [],
                         "images": [{"large": f"http://img/{i}.jpg"}]}) for i in ITEMS]
    return _write(tmp / "meta.jsonl", lines + ["{oops"])


@pytest.mark.parametrize(
    ("make_inter", "make_meta", "inter_fmt", "meta_fmt", "bad_inter", "bad_meta"),
    [
        (reviews_2014_2018, meta_2014, "reviews-2014-2018", "meta-2014", 3, 2),
        (ratings_2018, meta_2018, "ratings-csv-2018", "meta-2018", 2, 1),
        (reviews_2023, meta_2023, "reviews-2023", "meta-2023", 2, 1),
        (ratings_2023, meta_2023, "ratings-csv-2023", "meta-2023", 1, 1),
    ],
)
def test_formats_are_detected_and_malformed_lines_counted(tmp_path, make_inter, make_meta, inter_fmt, meta_fmt, bad_inter, bad_meta):
    inter, meta = make_inter(tmp_path), make_meta(tmp_path)
    assert detect_interactions_format(inter) == inter_fmt
    assert detect_meta_format(meta) == meta_fmt
    rows, rep = read_interactions(inter)
    assert rep.valid == 30 and rep.malformed == bad_inter and len(rows) == 30
    assert all(r.timestamp < 10_000_000_000 for r in rows), "2023 millisecond timestamps are normalized to seconds"
    products, mrep = read_meta(meta)
    assert mrep.malformed == bad_meta and mrep.valid == len(products) >= 5

    out = tmp_path / "ds"
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(inter), "--meta", str(meta), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out)
    assert len(ds.products) == 6, "products without metadata are kept"
    assert sum(not p["has_meta"] for p in ds.products.values()) == 6 - len([p for p in products if p in ITEMS])
    stats = json.loads((out / "stats.json").read_text())
    assert [p["malformed"] for p in stats["parse"]] == [bad_inter, bad_meta]
    assert "| #users | #products | #queries | #interactions |" in (out / "stats.md").read_text()
    assert all(r["query"] for r in ds.interactions)


def test_2018_cleanup_keeps_raw_and_falls_back_for_junk_titles_and_empty_categories(tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(ratings_2018(tmp_path)), "--meta", str(meta_2018(tmp_path)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out)
    p = ds.products["B000"]
    assert p["title"] == "Brand B000" and p["title_source"] == "brand"
    assert p["raw"]["title"].startswith("<span")
    assert p["description"] == "Great magazine."
    assert p["query"] == "magazine subscriptions sports leisure" and p["query_source"] == "category"
    nocat = ds.products["B004"]
    assert nocat["category"] == [] and nocat["query"] == "books" and nocat["query_source"] == "main_category"
    bare = ds.products["B005"]  # no metadata at all: dataset's most common root
    assert not bare["has_meta"] and bare["query"] == "magazine subscriptions" and bare["query_source"] == "dataset_root"


def test_split_is_chronological_70_30_per_user(tmp_path):
    out = tmp_path / "ds"
    runner.invoke(app, ["data", "amazon", "--interactions", str(reviews_2023(tmp_path)), "--meta", str(meta_2023(tmp_path)), "--out", str(out)])
    ds = load_dataset(out)
    for seq in ds.by_user().values():
        assert [r["split"] for r in seq] == ["train"] * 3 + ["test"] * 2  # floor(0.7 * 5) = 3
        assert [r["timestamp"] for r in seq] == sorted(r["timestamp"] for r in seq)


def test_nothing_valid_fails_with_clear_message_and_leaves_no_directory(tmp_path):
    bad = _write(tmp_path / "bad.json", ['{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}', "{nope", '{"reviewerID": "U1"}'])
    out = tmp_path / "ds"
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert "5-core" in res.output and "--min-core" in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".ds.tmp-*")), "no temporary directory is left behind"

    empty = _write(tmp_path / "empty.csv", ["B1,U1,5.0,yesterday", "B2,U2,5.0,"])
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(empty), "--out", str(out)])
    assert res.exit_code == 2 and "no valid interactions" in res.output


def test_missing_and_unknown_files_name_the_problem(tmp_path):
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope.json" in res.output
    odd = _write(tmp_path / "odd.json", ['{"foo": 1}'])
    res = runner.invoke(app, ["data", "amazon", "--interactions", str(odd), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "expected keys" in res.output


def test_existing_dataset_survives_a_failed_rebuild(tmp_path):
    out = tmp_path / "ds"
    assert runner.invoke(app, ["data", "amazon", "--interactions", str(ratings_2018(tmp_path)), "--out", str(out)]).exit_code == 0
    before = (out / "dataset.json").read_text()
    bad = _write(tmp_path / "bad.csv", ["a,b"])
    assert runner.invoke(app, ["data", "amazon", "--interactions", str(bad), "--out", str(out)]).exit_code == 2
    assert (out / "dataset.json").read_text() == before
