"""An exploring arm and an interleaved arm, served over a real app: what users get and what the log keeps."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contract import keys
from contract.arms import write_experiment
from contract.exploration import marginals
from contract.served import FIELD, ServedRanking
from service.api.app import create_app
from service.infra.settings import Settings


def _served(client, n, timeout_s=5.0):
    end = time.time() + timeout_s
    while True:
        stream = client.app.state.hmpps.redis.client.xrange(keys.SERVED_STREAM)
        got = [ServedRanking.from_json(f[FIELD.encode()]) for _, f in stream]
        if len(got) >= n or time.time() > end:
            return {r.request_id: r for r in got}
        time.sleep(0.05)


@pytest.fixture
def client(tmp_path, bundle_dir):
    arms = tmp_path / "arms.yaml"
    # a single arm, so every user lands in it
    write_experiment(arms, "exp", "s", [("explore", 1, {"bundle": str(bundle_dir),
                                                        "explore": {"temperature": 2.0, "depth": 6}})])
    with TestClient(create_app(Settings(redis_url=None, embedded_redis_path=tmp_path / "r" / "h.db", arms_file=arms,
                                        health_interval_s=0.2, served_log_sample=1.0, request_budget_ms=2000))) as c:
        # a 2 s budget: these tests check what the arms serve and log, not latency on a busy machine
        yield c


def _body(catalog, rid, k=8, **kw):
    return {"user_id": catalog["user"], "query": catalog["queries"][0], "request_id": rid,
            "candidates": [{"product_id": p, "score": float(k - i)} for i, p in enumerate(catalog["products"][:k])]} | kw


def test_an_exploring_arm_randomises_and_logs_each_items_display_probability(client, catalog):
    outs = [client.post("/rerank", json=_body(catalog, f"x-{i}")).json() for i in range(30)]
    assert [(o["arm"], o["fallback"]) for o in outs] == [("explore", None)] * 30
    orders = {tuple(r["product_id"] for r in o["results"]) for o in outs}
    assert len(orders) > 3  # at T=2 the top 6 are redrawn per request
    again = client.post("/rerank", json=_body(catalog, "x-0")).json()
    assert [r["product_id"] for r in again["results"]] == [r["product_id"] for r in outs[0]["results"]]  # a retry
    logged = _served(client, 31)
    for o in outs:
        rec = logged[o["request_id"]]
        assert [i.product_id for i in rec.items] == [r["product_id"] for r in o["results"]]
        assert rec.policy == "plackett-luce(T=2, depth=6)"
        props = [i.propensity for i in rec.items]
        assert all(0 < p < 1 for p in props[:6]) and props[6:] == [1.0, 1.0]
        assert 0 < rec.slate_propensity < max(props[:6]) and rec.teams is None
    # each logged probability is the exact Plackett-Luce marginal of the student's scores (also logged)
    for rid in ("x-0", "x-1", "x-2"):
        top = logged[rid].items[:6]
        det = sorted(top, key=lambda i: -i.score)  # the student's own order of its top 6
        p = np.array([i.score for i in det])
        exact = marginals(np.log(p) - np.log1p(-p), 2.0)
        for k, item in enumerate(top):
            assert item.propensity == pytest.approx(exact[det.index(item), k], abs=1e-4)


def test_an_interleaved_arm_merges_both_teams_and_logs_who_placed_what(tmp_path, bundle_dir, catalog):
    arms = tmp_path / "arms.yaml"
    write_experiment(arms, "exp", "s", [("il", 1, {"interleave": {"student": str(bundle_dir), "caller": "passthrough"}})])
    settings = Settings(redis_url=None, embedded_redis_path=tmp_path / "r" / "h.db", arms_file=arms,
                        health_interval_s=0.2, served_log_sample=1.0, request_budget_ms=2000)
    with TestClient(create_app(settings)) as c:
        info = c.get("/info").json()
        assert info["arms"] == [{"name": "il", "weight": 1.0, "interleave": ["student", "caller"]}]
        assert set(info["versions"]) == {"il:student", "il:caller"}
        outs = [c.post("/rerank", json=_body(catalog, f"i-{i}")).json() for i in range(20)]
        trimmed = c.post("/rerank", json=_body(catalog, "i-top", top_n=3)).json()
        logged = _served(c, 21)
    sent = [p for p in catalog["products"][:8]]
    for o in outs:
        assert (o["arm"], o["fallback"]) == ("il", None) and o["model_version"].endswith("|passthrough")
        assert sorted(r["product_id"] for r in o["results"]) == sorted(sent)
        assert [r["rank"] for r in o["results"]] == list(range(1, 9))
        rec = logged[o["request_id"]]
        assert rec.teams == ("student", "caller")
        teams = [i.team for i in rec.items]
        assert set(teams) == {"student", "caller"} and abs(teams.count("student") - teams.count("caller")) <= 1
        # the caller's team places its items in the caller's order
        mine = [i.original_position for i in rec.items if i.team == "caller"]
        assert mine == sorted(mine)
    assert len(trimmed["results"]) == 3 and len(logged["i-top"].items) == 3
