"""The open-loop load generator: refusal of remote targets, no coordinated omission, a real run."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from loadtest.mix import RequestMix
from loadtest.openloop import markdown, run_open_loop, validate
from service.errors import InputError


def test_refuses_remote_targets_and_unbounded_runs():
    with pytest.raises(InputError, match="--allow-remote"):
        validate("http://10.20.30.40:8000", 10, 1, allow_remote=False)
    validate("http://10.20.30.40:8000", 10, 1, allow_remote=True)
    validate("http://127.0.0.1:8000", 10, 1, allow_remote=False)
    validate("http://localhost:8000", 10, 1, allow_remote=False)
    with pytest.raises(InputError, match="capped"):
        validate("http://127.0.0.1:8000", 10_000, 3600, allow_remote=False)
    with pytest.raises(InputError, match="http://"):
        validate("ftp://127.0.0.1", 1, 1, allow_remote=False)


def test_mix_draws_real_users_queries_and_products(bundle_dir):
    mix = RequestMix(bundle_dir, k=10, seed=1, tail_share=0.5)
    bodies = [mix.body() for _ in range(50)]
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    assert all(len(b["candidates"]) == 10 for b in bodies)
    assert all(c["product_id"] in set(index["products"]) for b in bodies for c in b["candidates"])
    known = sum(b["query"] in set(index["queries"]) for b in bodies)
    assert 0 < known < 50  # some tail queries


def test_latency_counts_queueing_from_the_scheduled_time(bundle_dir):
    """A server that handles one request at a time in 40 ms, offered 50 req/s: a closed-loop
    client would report 40 ms; open loop must show the queue growing behind it."""
    lock = asyncio.Lock()

    async def slow_app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        async with lock:
            await asyncio.sleep(0.04)
        body = b'{"fallback": null}'
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    rep = asyncio.run(run_open_loop("http://test", 50, 1.0, RequestMix(bundle_dir, 5), timeout_s=10, progress=False,
                                    transport=httpx.ASGITransport(app=slow_app)))
    assert rep["ok"] == 50
    # 50 requests need 2 s of service: the last waits about 1 s past its schedule
    assert rep["latency"]["max_ms"] > 700 and rep["latency"]["p50_ms"] > 200
    assert "p99.9" in markdown(rep)


def test_real_service_under_a_short_load(tmp_path, bundle_dir):
    from service.app import create_app
    from service.settings import Settings
    from tests.live_server import live_server

    app = create_app(Settings(redis_url=None, embedded_redis_path=tmp_path / "r.db", bundle=bundle_dir))
    with live_server(app) as url:
        rep = asyncio.run(run_open_loop(url, 25, 2.0, RequestMix(bundle_dir, 10), progress=False))
    assert rep["requests"] == 50 and rep["ok"] + sum(rep["errors"].values()) + sum(
        v for k, v in rep["status"].items() if k != "200") == 50
    assert rep["status"].get("200", 0) > 40 and rep["latency"]["p50_ms"] is not None
    assert set(rep["fallback"]) <= {"none", "timeout"}


def test_sweep_report_finds_saturation_and_plots(tmp_path):
    from loadtest.report import plot_sweep, saturation, sweep_markdown

    def rep(rps, p99, fallbacks=0, errors=0):
        return {"target_rps": rps, "achieved_rps": rps, "requests": 1000, "error_rate": errors / 1000,
                "status": {"200": 1000 - errors, "429": errors}, "errors": {}, "fallback": {"none": 1000 - fallbacks,
                                                                                            "timeout": fallbacks},
                "latency": {"p50_ms": p99 / 3, "p90_ms": p99 / 2, "p99_ms": p99, "p99_9_ms": p99 * 2}}

    reps = [rep(100, 7), rep(200, 9), rep(300, 40, fallbacks=5), rep(400, 90, fallbacks=300)]
    assert saturation(reps) == 300  # 0.5% fallbacks is within the 1% allowance; 30% is not
    assert saturation([rep(100, 150)]) is None
    assert "300 req/s" in sweep_markdown(reps)
    plot_sweep(reps, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
