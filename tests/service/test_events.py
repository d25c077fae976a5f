"""Live histories: POST /events over the real app, a real embedded Redis and the real ONNX bundle."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from contract import keys
from contract.bundle import read_manifest, write_manifest
from contract.publish import publish
from service.api.app import create_app
from service.infra.settings import Settings


@pytest.fixture
def client(tmp_path, bundle_dir):
    settings = Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", bundle=bundle_dir,
                        health_interval_s=0.2, admin_token="s3cret")
    with TestClient(create_app(settings)) as c:
        yield c


def _event(i, user, product, kind="purchase", ts=None, **kw):
    return {"event_id": f"e-{user}-{i}", "user_id": user, "product_id": product, "type": kind,
            "timestamp": time.time() - 60 + i if ts is None else ts, **kw}


def _live(client, user):
    r = client.app.state.hmpps.redis.client
    return [keys.history_product(m) for m in r.zrevrange(keys.user_history(user), 0, -1)]


def _rerank(client, catalog, **kw):
    body = {"user_id": catalog["user"], "query": catalog["queries"][0], "explain": True,
            "candidates": [{"product_id": p} for p in catalog["products"][:8]]} | kw
    res = client.post("/rerank", json=body)
    assert res.status_code == 200, res.text
    return res.json()


def test_a_purchase_joins_the_history_and_the_next_rerank_uses_it(client, catalog):
    before = _rerank(client, catalog)
    assert before["explain"]["history"] == catalog["history"][:len(before["explain"]["history"])]
    bought = catalog["products"][-1]
    res = client.post("/events", json={"events": [_event(1, catalog["user"], bought, query="what they typed"),
                                                  _event(2, catalog["user"], catalog["products"][0], "click")]})
    assert res.status_code == 200 and res.json() == {"accepted": 2, "duplicates": 0, "history_appends": 1,
                                                     "unknown_products": 0}
    after = _rerank(client, catalog)
    assert after["explain"]["history"][0] == bought  # newest first; the click is not history
    assert after["explain"]["history"][1:] == before["explain"]["history"][: len(after["explain"]["history"]) - 1]
    for r in after["results"]:
        # the ranking signals the student read: its place in the caller's list and the live history
        sig = r["explain"]["signals"]
        assert sig["position_fraction"] == pytest.approx((r["original_rank"] - 1) / 7, abs=1e-4)
        assert sig["bought_before"] == float(r["product_id"] in after["explain"]["history"])
        assert r["explain"]["features"] == "offline"
        assert set(r["explain"]["selected_history"]) <= set(after["explain"]["history"])
        assert 0 < len(r["explain"]["selected_history"]) <= read_manifest(client.app.state.hmpps.runtime
                                                                          .bundles["student"].path).spec.k_s2
    stream = client.app.state.hmpps.redis.client.xrange(keys.EVENTS_STREAM)
    assert [json.loads(f[b"e"])["type"] for _, f in stream] == ["purchase", "click"]
    plain = client.post("/rerank", json={"user_id": catalog["user"], "query": "x",
                                         "candidates": [{"product_id": catalog["products"][0]}]}).json()
    assert "explain" not in plain and "explain" not in plain["results"][0]  # off by default


def test_a_retried_batch_changes_nothing(client, catalog):
    batch = {"events": [_event(i, "U-retry", catalog["products"][i]) for i in range(3)]}
    assert client.post("/events", json=batch).json()["accepted"] == 3
    history, streamed = _live(client, "U-retry"), client.app.state.hmpps.redis.client.xlen(keys.EVENTS_STREAM)
    again = client.post("/events", json=batch).json()
    assert again == {"accepted": 0, "duplicates": 3, "history_appends": 0, "unknown_products": 0}
    assert _live(client, "U-retry") == history
    assert client.app.state.hmpps.redis.client.xlen(keys.EVENTS_STREAM) == streamed


def test_cap_late_events_and_unknown_products(client, catalog):
    cap = client.app.state.hmpps.runtime.bundles["student"].history_cap
    now = time.time()
    events = [_event(i, "U-cap", catalog["products"][i % len(catalog["products"])], ts=now - 1000 + i)
              for i in range(cap + 5)]
    for start in range(0, len(events), 20):
        assert client.post("/events", json={"events": events[start:start + 20]}).status_code == 200
    live = _live(client, "U-cap")
    assert len(live) == cap and live[0] == events[-1]["product_id"]  # the newest kept
    late = _event(999, "U-cap", "BRAND-NEW", ts=now - 1000 + cap + 2.5)
    unknown_before = _counter(client.get("/metrics").text, "hmpps_events_unknown_products_total")
    res = client.post("/events", json={"events": [late]}).json()
    assert res["unknown_products"] == 1 and res["history_appends"] == 1  # accepted and counted
    assert _live(client, "U-cap")[2] == "BRAND-NEW"  # placed by its time, not first
    metrics = client.get("/metrics").text  # counters are per process: compare with before
    assert _counter(metrics, 'hmpps_events_total{type="purchase"}') >= len(events) + 1
    assert _counter(metrics, "hmpps_events_unknown_products_total") == unknown_before + 1


def _counter(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("change, field", [
    ({"event_id": None}, "event_id"),
    ({"type": "Buy Now"}, "type"),
    ({"timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
    ({"timestamp": "soon"}, "neither ISO 8601"),
    ({"colour": "red"}, "colour"),
])
def test_bad_events_get_a_422_naming_the_problem(client, change, field):
    event = {k: v for k, v in (_event(1, "U", "P") | change).items() if v is not None}
    res = client.post("/events", json={"events": [event]})
    assert res.status_code == 422 and field in res.text
    assert client.post("/events", json={"events": []}).status_code == 422


def test_live_history_survives_a_new_bundle_version(client, catalog, bundle_dir, tmp_path):
    client.post("/events", json={"events": [_event(1, catalog["user"], catalog["products"][5])]})
    live = _live(client, catalog["user"])
    # a new version of the bundle (other summaries: other content, other version), published beside the old one
    new = tmp_path / "bundle2"
    shutil.copytree(bundle_dir, new)
    (new / "manifest.json").unlink()
    with open(new / "features" / "summaries.jsonl", "a") as f:
        f.write(json.dumps({"product_id": "EXTRA", "summary": "new text"}) + "\n")
    old = read_manifest(bundle_dir)
    made = write_manifest(new, "synthetic-s7", old.dataset, old.dataset_fingerprint, old.spec, old.models,
                          old.features, old.extra)
    assert made.version != old.version
    r = client.app.state.hmpps.redis.client
    publish(new, r, activate=True)
    assert _live(client, catalog["user"]) == live  # seeding never displaces newer actions
    assert _live(client, catalog["user"])[0] == catalog["products"][5]
