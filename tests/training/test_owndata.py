"""``hmpps data events``: a shop's own products and events (schema hmpps-owndata/1) -> a dataset directory."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from typer.testing import CliRunner

from contract.events import parse_event, parse_product, parse_timestamp
from hmpps.cli import app
from training.dataset import load_dataset
from training.owndata import read_events, read_products

runner = CliRunner()


def _jsonl(path, rows, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _shop(tmp_path, n_users=6, n_products=6, per_user=6):
    products = [{"product_id": f"P{i}", "title": f"Mug {i}", "brand": "Acme", "category": "Home > Kitchen > Mugs",
                 "attributes": {"colour": "red"}} for i in range(n_products)]
    events = []
    for u in range(n_users):
        for j in range(per_user):
            events.append({"event_id": f"u{u}-{j}", "user_id": f"U{u}", "product_id": f"P{(u + j) % n_products}",
                           "type": "purchase", "timestamp": 1_700_000_000 + 3600 * j + u,
                           **({"query": f"red mug {j}"} if j % 2 else {})})
    return products, events


def test_events_build_a_dataset_with_real_queries_and_the_category_rule(tmp_path):
    products, events = _shop(tmp_path)
    events.append({"event_id": "view-1", "user_id": "U0", "product_id": "P1", "type": "click", "timestamp": 1_700_000_000})
    events.append({"event_id": "x-1", "user_id": "U0", "product_id": "NOPE", "type": "purchase", "timestamp": 1_700_000_000})
    pf = _jsonl(tmp_path / "products.jsonl.gz", products, gz=True)
    ef = _jsonl(tmp_path / "events.jsonl", events)
    res = runner.invoke(app, ["data", "events", "--products", str(pf), "--events", str(ef), "--out", str(tmp_path / "d"),
                              "--min-core", "2"])
    assert res.exit_code == 0, res.output
    assert "'click': 1" in res.output and "1 for unknown products" in res.output
    ds = load_dataset(tmp_path / "d")
    queries = {r["query"] for r in ds.interactions}
    assert "red mug 1" in queries and "red mug 3" in queries  # the searched text, as it is
    assert "home kitchen mugs" in queries or any(q and "mugs" in q for q in queries)  # the category rule
    assert ds.products["P0"]["category"] == ["Home", "Kitchen", "Mugs"] and ds.products["P0"]["extra"] == {"colour": "red"}
    assert len(ds.interactions) == 36  # clicks and unknown products are not purchases


def test_bad_lines_are_counted_and_named(tmp_path):
    now = time.time()
    pf = _jsonl(tmp_path / "p.jsonl", [
        {"product_id": "P1", "title": "ok"},
        {"product_id": "P2"},  # no title
        {"product_id": "P3", "title": "x", "colour": "red"},  # unknown field
        "{not json",
        {"product_id": "P1", "title": "again"},  # duplicate id
    ])
    products, rep, _ = read_products(pf)
    assert set(products) == {"P1"} and rep.malformed == 4
    assert any("missing title" in e for e in rep.examples) and any("unknown field 'colour'" in e for e in rep.examples)
    ef = _jsonl(tmp_path / "e.jsonl", [
        {"event_id": "e1", "user_id": "U", "product_id": "P1", "type": "purchase", "timestamp": "2024-05-01T10:00:00Z"},
        {"user_id": "U", "product_id": "P1", "type": "purchase", "timestamp": 1},  # no event_id
        {"event_id": "e3", "user_id": "U", "product_id": "P1", "type": "purchase", "timestamp": now + 86400},
        {"event_id": "e4", "user_id": "U", "product_id": "P1", "type": "Buy Now!", "timestamp": 1},
        {"event_id": "e1", "user_id": "U", "product_id": "P1", "type": "purchase", "timestamp": 5},  # retried: once
    ])
    rows, erep, counts = read_events(ef, ("purchase",), {"P1"})
    assert len(rows) == 1 and rows[0].timestamp == 1714557600 and erep.malformed == 3
    assert any("missing event_id" in e for e in erep.examples)
    assert any("in the future" in e for e in erep.examples) and any("lower-case name" in e for e in erep.examples)


def test_csv_files_with_a_path_string_and_json_attributes(tmp_path):
    (tmp_path / "p.csv").write_text('product_id,title,category,attributes\nP1,Pen,Office > Pens,"{""ink"": ""blue""}"\n'
                                    "P2,Pad,Office > Paper,\n")
    products, rep, _ = read_products(tmp_path / "p.csv")
    assert rep.valid == 2 and products["P1"].categories == [["Office", "Pens"]] and products["P1"].extra == {"ink": "blue"}
    (tmp_path / "e.csv").write_text("event_id,user_id,product_id,type,timestamp,query\n"
                                    "e1,U1,P1,purchase,1700000000,blue pen\ne2,U1,P2,add_to_cart,2023-11-14T22:13:21+00:00,\n"
                                    "e3,U1,P2,purchase\n")
    rows, erep, _ = read_events(tmp_path / "e.csv", ("purchase", "add_to_cart"), set(products))
    assert [(r.product_id, r.query) for r in rows] == [("P1", "blue pen"), ("P2", None)] and erep.malformed == 1


def test_nothing_valid_fails_with_exit_2_and_writes_nothing(tmp_path):
    pf = _jsonl(tmp_path / "p.jsonl", [{"product_id": "P1", "title": "t"}])
    ef = _jsonl(tmp_path / "e.jsonl", [{"event_id": "e", "user_id": "U", "product_id": "P9", "type": "purchase",
                                         "timestamp": 1}])
    res = runner.invoke(app, ["data", "events", "--products", str(pf), "--events", str(ef), "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "no valid purchase/add_to_cart event of a known product" in res.output
    assert "1 for unknown products" in res.output and not (tmp_path / "d").exists()


def test_synthetic_export_read_back_is_the_same_dataset(tmp_path):
    src = tmp_path / "src"
    assert runner.invoke(app, ["data", "synthetic", "--users", "40", "--products", "40", "--seed", "2", "--format",
                               "events", "--queries", "category", "--out", str(src)]).exit_code == 0
    res = runner.invoke(app, ["data", "events", "--products", str(src / "products.jsonl.gz"), "--events",
                              str(src / "events.jsonl.gz"), "--out", str(tmp_path / "via_events")])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["data", "synthetic", "--users", "40", "--products", "40", "--seed", "2",
                               "--out", str(tmp_path / "direct")]).exit_code == 0
    a, b = load_dataset(tmp_path / "via_events"), load_dataset(tmp_path / "direct")
    assert a.fingerprint == b.fingerprint
    assert (tmp_path / "via_events" / "users_truth.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "via_events" / "images").iterdir()) == \
        sorted(p.name for p in (tmp_path / "direct" / "images").iterdir())


def test_contract_parsers_name_the_problem():
    assert parse_timestamp("2024-01-01T00:00:00") == parse_timestamp("2024-01-01T00:00:00+00:00") == 1704067200
    with pytest.raises(ValueError, match="neither ISO 8601 nor unix seconds"):
        parse_timestamp("yesterday")
    e = parse_event({"event_id": 7, "user_id": "u", "product_id": "p", "type": "add_to_cart", "timestamp": "12"})
    assert e.event_id == "7" and e.timestamp == 12.0
    p = parse_product({"product_id": "p", "title": "t", "image": "https://cdn.example/p.jpg", "category": ["A", " B "]})
    assert p.image is None and p.image_url == "https://cdn.example/p.jpg" and p.category == ("A", "B")
    with pytest.raises(ValueError, match="category must be"):
        parse_product({"product_id": "p", "title": "t", "category": 3})
