"""The first requests after a reload against steady state, with warm-up from real requests on and off.

For each setting of ``HMPPS_WARMUP_REQUESTS`` (default: 0, i.e. only the three synthetic scoring
calls of loading, and 200): serve an arms file whose one arm is copy A of the bundle (one worker,
a Debian ``redis-server``), send ``--requests`` /rerank requests one at a time (steady state), point
the arm at copy B (a new ONNX session, as a new bundle would be), ``POST /admin/reload``, and send
``--requests`` more at once. The served log the warm-up replays is the steady phase's traffic.

    python scripts/bench_warmup.py --bundle runs/demo/pipeline/bundle --out docs/bench/warmup.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from contract.reports import markdown_table
from loadtest.mix import RequestMix
from loadtest.reliability import ADMIN_TOKEN, RedisServer, service
from loadtest.report import write_bench_json


def _ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 99)} | {
        "max_ms": round(float(a.max()), 2), "first10_mean_ms": round(float(a[:10].mean()), 2)}


def _phase(c: httpx.Client, mix: RequestMix, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = c.post("/rerank", json=mix.body())
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", default="0,200", help="HMPPS_WARMUP_REQUESTS settings to compare")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    results = []
    for r in range(a.rounds):
        for warm in [int(x) for x in a.warmup.split(",")]:
            with tempfile.TemporaryDirectory(prefix="hmpps-warmup-") as tmp:
                root = Path(tmp)
                for name in ("a", "b"):
                    shutil.copytree(a.bundle, root / name)
                arms = root / "arms.yaml"
                arms.write_text(yaml.safe_dump({"experiment": "warmup", "salt": "s", "arms": [
                    {"name": "student", "weight": 1, "bundle": str(root / "a")}]}))
                (root / "redis").mkdir()
                redis = RedisServer(root / "redis")
                redis.start()
                try:
                    with service(None, redis.url, arms=arms, HMPPS_WARMUP_REQUESTS=str(warm)) as (url, _), \
                            httpx.Client(base_url=url, timeout=30) as c:
                        mix = RequestMix(a.bundle, 10, seed=r)
                        steady = _phase(c, mix, a.requests)
                        arms.write_text(arms.read_text().replace(str(root / "a"), str(root / "b")))
                        t = time.perf_counter()
                        rel = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                        reload_s = time.perf_counter() - t
                        rel.raise_for_status()
                        after = _phase(c, mix, a.requests)
                finally:
                    redis.kill()
            row = {"round": r + 1, "warmup_requests": warm, "steady": _ms(steady), "after_reload": _ms(after),
                   "reload_s": round(reload_s, 3), "warmed": rel.json().get("warmed")}
            results.append(row)
            print(json.dumps(row))
    write_bench_json(a.out, {"bundle": str(a.bundle), "requests": a.requests, "results": results})
    rows = [[x["round"], x["warmup_requests"], x["reload_s"],
             f"{x['steady']['p50_ms']} / {x['steady']['p99_ms']}",
             f"{x['after_reload']['p50_ms']} / {x['after_reload']['p99_ms']}",
             x["after_reload"]["first10_mean_ms"], x["after_reload"]["max_ms"]] for x in results]
    print("\n" + markdown_table(["round", "warm-up requests", "reload s", "steady p50 / p99 ms",
                                 "first 1,000 after reload p50 / p99 ms", "first 10 mean ms", "max ms"], rows,
                                "rrrllrr"))

if __name__ == "__main__":
    main()
