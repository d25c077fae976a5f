"""Latency of the experiment arms against the plain student arm: exploring and interleaved.

Serves one arms file with three arms (``python -m service``, a Debian ``redis-server``, one worker) and
times, one request at a time over HTTP, ``--requests`` requests of K=10 candidates per arm. Users are
drawn until each arm has its share (assignment is a salted hash of the user id):

    student      the bundle, deterministic
    explore      the same bundle, Plackett-Luce at T=0.2 over the top 10 (display marginals computed)
    interleaved  the bundle and passthrough, team draft (both rank every request)

    python scripts/bench_experiment_arms.py --bundle runs/demo/pipeline/bundle --out docs/bench/experiment_arms.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from contract.arms import load_experiment, write_experiment
from loadtest.reliability import RedisServer, service
from loadtest.report import bench_script_args, latency_ms, write_bench_json


def main() -> None:
    a, products, queries = bench_script_args(__doc__ or "", 300)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        arms = Path(tmp) / "arms.yaml"
        bundle = str(a.bundle.resolve())
        write_experiment(arms, "bench", "bench", [
            ("student", 1, bundle), ("explore", 1, {"bundle": bundle, "explore": {"temperature": 0.2, "depth": 10}}),
            ("interleaved", 1, {"interleave": {"student": bundle, "caller": "passthrough"}})])
        exp = load_experiment(arms)
        pool = [f"user-{i}" for i in range(3000)]  # the index holds no users; these have no history
        by_arm: dict[str, list[str]] = {}
        for u in pool:
            by_arm.setdefault(exp.assign(u).name, []).append(u)
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            with service(None, redis.url, arms=arms, HMPPS_SERVED_LOG_SAMPLE="1.0") as (url, _):
                timings: dict[str, list[float]] = {k: [] for k in ("student", "explore", "interleaved")}
                fallbacks = {k: 0 for k in timings}
                with httpx.Client(base_url=url, timeout=30) as c:
                    for i in range(a.requests):
                        ids = list(rng.choice(products, size=10, replace=False))
                        for arm in timings:
                            body = {"user_id": by_arm[arm][i % len(by_arm[arm])], "query": queries[i % len(queries)],
                                    "candidates": [{"product_id": x, "score": float(10 - k)} for k, x in enumerate(ids)]}
                            t = time.perf_counter()
                            r = c.post("/rerank", json=body)
                            timings[arm].append(time.perf_counter() - t)
                            r.raise_for_status()
                            assert r.json()["arm"] == arm
                            fallbacks[arm] += r.json()["fallback"] is not None
                out = {k: latency_ms(v) | {"fallbacks": fallbacks[k]} for k, v in timings.items()}
        finally:
            redis.kill()
    write_bench_json(a.out, {"bundle": str(a.bundle), "requests": a.requests, "arms": out})
    for k, v in out.items():
        print(f"{k:12s} p50 {v['p50_ms']:6.2f} ms  p99 {v['p99_ms']:6.2f} ms  fallbacks {v['fallbacks']}")


if __name__ == "__main__":
    main()
