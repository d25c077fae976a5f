"""Cross-request batching: concurrent requests scored in shared ONNX calls rank as one at a time."""

from __future__ import annotations

import asyncio

import httpx

from service.api.app import create_app
from service.infra import metrics as m
from service.infra.settings import Settings
from tests.live_server import live_server


def _bodies(catalog, n=24):
    products, queries = catalog["products"], catalog["queries"]
    return [{"user_id": catalog["user"] if i % 2 else f"user-{i}", "query": queries[i % len(queries)],
             "candidates": [{"product_id": p, "score": float(10 - j)}
                            for j, p in enumerate(products[i % 7: i % 7 + 6 + i % 5])]} for i in range(n)]


def _ranked(resp):
    return [(r["product_id"], r["score"]) for r in resp["results"]]


def _batched_calls():
    (metric,) = m.BATCH_REQUESTS.collect()
    got = {s.name: s.value for s in metric.samples if s.name.endswith(("_count", "_sum"))}
    return got["hmpps_batch_requests_count"], got["hmpps_batch_requests_sum"]


def test_concurrent_requests_share_onnx_calls_and_rank_as_one_at_a_time(tmp_path, bundle_dir, catalog):
    bodies = _bodies(catalog)
    alone = Settings(redis_url=None, embedded_redis_path=tmp_path / "r" / "hmpps.db", bundle=bundle_dir,
                     health_interval_s=0.2)
    with live_server(create_app(alone)) as url, httpx.Client(base_url=url) as c:
        expected = [_ranked(c.post("/rerank", json=b).json()) for b in bodies]  # one at a time, no batching

    batched = alone.model_copy(update={"batch_delay_ms": 5.0})
    calls, requests = _batched_calls()
    with live_server(create_app(batched)) as url:
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                return await asyncio.gather(*(c.post("/rerank", json=b) for b in bodies))
        got = [r.json() for r in asyncio.run(burst())]
    assert all(r["fallback"] is None for r in got)
    new_calls, new_requests = _batched_calls()
    assert new_requests - requests == len(bodies)  # every request went through the batcher ...
    assert new_calls - calls < len(bodies)  # ... and some ONNX calls scored several requests
    for want, have in zip(expected, got, strict=True):
        assert [p for p, _ in _ranked(have)] == [p for p, _ in want]
        # responses round scores to 6 decimals: float sums in a batched call can differ in the 7th and land on
        # the other side of a rounding boundary, one unit (1e-6) apart; anything more is a real difference
        assert max(abs(a - b) for (_, a), (_, b) in zip(_ranked(have), want, strict=True)) <= 1e-6 + 1e-9
