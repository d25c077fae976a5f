"""Latency of /v1/rerank against /rerank on one bundle: product ids, new free text (encoded), cached free text.

Serves the bundle (``python -m service``, a Debian ``redis-server``, one worker) and times, one request at a
time over HTTP, ``--requests`` requests of K=10 documents for each kind:

    ids       /v1/rerank with the bundle's product ids (what /rerank does, in the other shape)
    rerank    /rerank with the same candidates
    new text  /v1/rerank with 10 free texts never seen before (each one encoded by the product encoder)
    cached    the same free texts again (the per-process cache)

    python scripts/bench_compat.py --bundle runs/demo/pipeline/bundle --out docs/bench/compat.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.reliability import RedisServer, service
from loadtest.report import bench_script_args, latency_ms, write_bench_json


def main() -> None:
    a, products, queries = bench_script_args(__doc__ or "", 100)
    rng = np.random.default_rng(0)
    words = sorted({w for q in queries for w in q.split()}) + ["waterproof", "light", "steel", "cotton", "large"]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            with service(a.bundle, redis.url) as (url, _):
                out: dict[str, dict[str, float]] = {}
                timings: dict[str, list[float]] = {k: [] for k in ("rerank", "ids", "new text", "cached text")}
                fallbacks = {k: 0 for k in timings}
                with httpx.Client(base_url=url, timeout=30) as c:
                    for i in range(a.requests):
                        ids = list(rng.choice(products, size=10, replace=False))
                        q = queries[i % len(queries)]
                        texts = [" ".join(rng.choice(words, size=6)) + f" model {i}-{j}" for j in range(10)]
                        calls = {"rerank": ("/rerank", {"user_id": "anonymous", "query": q, "history": [],
                                                        "candidates": [{"product_id": x} for x in ids]}),
                                 "ids": ("/v1/rerank", {"query": q, "documents": ids}),
                                 "new text": ("/v1/rerank", {"query": q, "documents": texts}),
                                 "cached text": ("/v1/rerank", {"query": q, "documents": texts})}
                        for kind, (path, body) in calls.items():
                            t = time.perf_counter()
                            r = c.post(path, json=body)
                            timings[kind].append(time.perf_counter() - t)
                            doc = r.json()
                            fb = doc.get("fallback") if path == "/rerank" else doc["meta"]["hmpps"]["fallback"]
                            fallbacks[kind] += fb is not None
                for kind, s in timings.items():
                    out[kind] = latency_ms(s) | {"fallbacks": fallbacks[kind]}
        finally:
            redis.kill()
    write_bench_json(a.out, {"bundle": str(a.bundle), "k": 10, "results": out})
    print("| request | p50 ms | p99 ms | mean ms | fallbacks |\n|---|---:|---:|---:|---:|")
    for kind, r in out.items():
        print(f"| {kind} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} | {r['fallbacks']} / {r['n']} |")


if __name__ == "__main__":
    main()
