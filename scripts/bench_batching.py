"""Cross-request batching measured: one worker's saturation throughput and the p99 at fixed rates,
with batching off (``HMPPS_BATCH_DELAY_MS=0``) and on, alternating.

Each setting serves the bundle (one worker, a Debian ``redis-server``); ``wrk -t1 -cN`` gives
the saturation throughput, and the open-loop engine of ``hmpps loadtest`` the latency at each
``--rates`` (latency from the scheduled send, so queueing counts).

    python scripts/bench_batching.py --bundle runs/demo/pipeline/bundle --out docs/bench/batching.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loadtest.capacity import parse_wrk, wrk_script
from loadtest.mix import RequestMix
from loadtest.openloop import run_open_loop
from loadtest.reliability import RedisServer, service
from loadtest.report import write_bench_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--delays", default="0,1", help="HMPPS_BATCH_DELAY_MS settings (0: off)")
    p.add_argument("--rates", default="100,400")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hmpps-batching-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            script = wrk_script(a.bundle, Path(tmp) / "post.lua")
            for r in range(a.rounds):
                for delay in a.delays.split(","):
                    with service(a.bundle, redis.url, HMPPS_BATCH_DELAY_MS=delay) as (url, _):
                        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(script), url + "/rerank"],
                                       capture_output=True, check=True)
                        sat = parse_wrk(subprocess.run(
                            ["wrk", "-t1", f"-c{a.connections}", f"-d{a.duration:g}s", "--latency", "-s", str(script),
                             url + "/rerank"], capture_output=True, text=True, check=True).stdout)
                        row: dict[str, Any] = {"round": r + 1, "delay_ms": float(delay), "saturation": sat}
                        for rate in a.rates.split(","):
                            rep = asyncio.run(run_open_loop(url, float(rate), a.duration, RequestMix(a.bundle, 10, r),
                                                            progress=False))
                            row[f"rate_{rate}"] = {"p50_ms": round(rep["latency"]["p50_ms"], 2),
                                                   "p99_ms": round(rep["latency"]["p99_ms"], 2),
                                                   "error_rate": rep["error_rate"]}
                    rows.append(row)
                    print(json.dumps(row))
        finally:
            redis.kill()
    write_bench_json(a.out, {"bundle": str(a.bundle), "rows": rows})
    rates = a.rates.split(",")
    print(f"\n| round | batch delay ms | saturation req/s (-c{a.connections}) | "
          + " | ".join(f"{x} req/s p50 / p99 ms" for x in rates) + " |")
    print("|---:|---:|---:|" + "---|" * len(rates))
    for x in rows:
        print(f"| {x['round']} | {x['delay_ms']:g} | {x['saturation']['rps']:.0f} | "
              + " | ".join(f"{x[f'rate_{q}']['p50_ms']} / {x[f'rate_{q}']['p99_ms']}" for q in rates) + " |")


if __name__ == "__main__":
    main()
