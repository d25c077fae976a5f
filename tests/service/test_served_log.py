"""The served-rankings log: what the service writes for every rerank, off the request's path."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from contract import keys
from contract.served import FIELD, ServedRanking
from service.api.app import create_app
from service.infra import metrics as m
from service.infra.settings import Settings


def _settings(tmp_path, bundle_dir, **kw):
    return Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", bundle=bundle_dir,
                    health_interval_s=0.2, **kw)


def _body(catalog, rid, k=6):
    return {"user_id": catalog["user"], "query": catalog["queries"][0], "request_id": rid,
            "candidates": [{"product_id": p, "score": float(k - i)} for i, p in enumerate(catalog["products"][:k])]}


def _served(client):
    stream = client.app.state.hmpps.redis.client.xrange(keys.SERVED_STREAM)
    return [ServedRanking.from_json(f[FIELD.encode()]) for _, f in stream]


def _wait_for(fn, n, timeout_s=5.0):
    end = time.time() + timeout_s
    while time.time() < end:
        got = fn()
        if len(got) >= n:
            return got
        time.sleep(0.02)
    return fn()


def test_every_rerank_is_logged_in_served_order(tmp_path, bundle_dir, catalog):
    with TestClient(create_app(_settings(tmp_path, bundle_dir))) as client:
        out = client.post("/rerank", json=_body(catalog, "req-1")).json()
        (rec,) = _wait_for(lambda: _served(client), 1)
    assert (rec.request_id, rec.user_id, rec.query, rec.arm, rec.model_version, rec.fallback) == (
        "req-1", catalog["user"], catalog["queries"][0], out["arm"], out["model_version"], None)
    assert [i.product_id for i in rec.items] == [r["product_id"] for r in out["results"]]
    assert [i.original_position for i in rec.items] == [r["original_rank"] - 1 for r in out["results"]]
    assert [i.score for i in rec.items] == [r["score"] for r in out["results"]]
    sent = {c["product_id"]: c["score"] for c in _body(catalog, "req-1")["candidates"]}
    assert [i.caller_score for i in rec.items] == [sent[i.product_id] for i in rec.items]
    assert rec.listed == len(sent)
    assert abs(rec.ts - time.time()) < 60


def test_the_response_does_not_wait_for_the_log_and_a_failure_is_only_counted(tmp_path, bundle_dir, catalog):
    with TestClient(create_app(_settings(tmp_path, bundle_dir))) as client:
        store = client.app.state.hmpps.store
        real = store.log_served

        async def slow(records):
            await asyncio.sleep(1.0)
            await real(records)
        store.log_served = slow
        t = time.perf_counter()
        res = client.post("/rerank", json=_body(catalog, "req-slow"))
        took = time.perf_counter() - t
        assert res.status_code == 200 and took < 0.9  # answered before the 1 s write finished
        assert _served(client) == []
        assert [r.request_id for r in _wait_for(lambda: _served(client), 1)] == ["req-slow"]

        async def broken(records):
            raise ConnectionError("redis went away")
        store.log_served = broken
        before = m.SERVED_LOG_FAILURES._value.get()
        res = client.post("/rerank", json=_body(catalog, "req-broken"))
        assert res.status_code == 200 and res.json()["fallback"] is None
        end = time.time() + 5
        while m.SERVED_LOG_FAILURES._value.get() == before and time.time() < end:
            time.sleep(0.02)
        assert m.SERVED_LOG_FAILURES._value.get() == before + 1


def test_a_sample_of_zero_logs_nothing(tmp_path, bundle_dir, catalog):
    with TestClient(create_app(_settings(tmp_path, bundle_dir, served_log_sample=0.0))) as client:
        for i in range(3):
            assert client.post("/rerank", json=_body(catalog, f"r{i}")).status_code == 200
        time.sleep(0.3)
        assert _served(client) == []


def test_bad_served_records_are_named():
    with pytest.raises(ValueError, match="lacks"):
        ServedRanking.from_json('{"id": "x"}')
    with pytest.raises(ValueError, match="not JSON"):
        ServedRanking.from_json("{")
    with pytest.raises(ValueError, match="product id, position, score"):
        ServedRanking.from_json('{"id":"x","u":"u","q":"q","a":"a","v":"v","ts":1,"c":[["p","0",null]]}')
