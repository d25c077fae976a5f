"""Serving throughput of two source trees, alternating, on the same Redis, bundle and wrk bodies.

For refactors that must not cost speed: each round serves the bundle from one tree, then the
other (``python -m service`` run in that tree, one worker, a Debian ``redis-server``), and drives
``/rerank`` with ``wrk -t1`` at one connection and at ``--connections``. Rounds alternate so
that drift of the machine hits both sides alike.

    git worktree add /tmp/before <commit>
    python scripts/compare_serving.py --before /tmp/before --after . --bundle runs/demo/pipeline/bundle \\
        --out docs/bench/refactor_serving.json

Needs Debian's redis-server and wrk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from contract.reports import markdown_table
from loadtest.capacity import parse_wrk, wrk_script
from loadtest.reliability import RedisServer, service
from loadtest.report import write_bench_json


def _load(tree: Path, bundle: Path, redis_url: str, script: Path, duration_s: float,
          connections: list[int]) -> dict[str, Any]:
    with service(bundle, redis_url, cwd=tree, PYTHONPATH=str(tree)) as (url, _):
        subprocess.run(["wrk", "-t1", "-c1", "-d2s", "-s", str(script), url + "/rerank"], capture_output=True, check=True)
        out = {}
        for c in connections:
            res = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{duration_s:g}s", "--latency", "-s", str(script),
                                  url + "/rerank"], capture_output=True, text=True, check=True)
            out[f"c{c}"] = parse_wrk(res.stdout)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="source tree of the old code")
    p.add_argument("--after", type=Path, required=True, help="source tree of the new code")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="hmpps-compare-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            script = wrk_script(a.bundle, Path(tmp) / "post.lua")
            rounds = []
            for r in range(a.rounds):
                row: dict[str, Any] = {"round": r + 1}
                for side in ("before", "after"):
                    row[side] = _load(getattr(a, side).resolve(), a.bundle.resolve(), redis.url, script, a.duration,
                                      [1, a.connections])
                rounds.append(row)
                print(json.dumps(row))
        finally:
            redis.kill()
    write_bench_json(a.out, {"before": str(a.before), "after": str(a.after), "bundle": str(a.bundle),
                                 "duration_s": a.duration, "rounds": rounds})
    c = f"c{a.connections}"
    rows = [[r["round"], f"{r['before']['c1']['rps']:.0f}", f"{r['after']['c1']['rps']:.0f}",
             f"{r['before'][c]['rps']:.0f}", f"{r['after'][c]['rps']:.0f}", r["before"]["c1"]["p99_ms"],
             r["after"]["c1"]["p99_ms"]] for r in rounds]
    print("\n" + markdown_table(["round", "before -c1 req/s", "after -c1", f"before -{c}", f"after -{c}",
                                 "before p99 -c1 ms", "after p99 -c1"], rows, "r" * 7))

if __name__ == "__main__":
    main()
