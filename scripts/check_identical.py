"""Behaviour fingerprint of the whole path, for refactors that must not change it.

Runs, through the public CLI and HTTP API only (so it works on any commit):

    hmpps data synthetic (fixed seed) -> hmpps pipeline --profile tiny -> hmpps serve

then sends a fixed set of requests (known and tail queries, given and stored
histories, unknown products, summaries, top_n, feedback, bad input) and writes
``OUT/outputs.json``: every ``metrics.json`` of the pipeline and every response,
with wall-clock fields (timings, seconds, published_at) removed.

    python scripts/check_identical.py --out /tmp/before
    ... change the code ...
    python scripts/check_identical.py --out /tmp/after
    python scripts/check_identical.py --compare /tmp/before/outputs.json /tmp/after/outputs.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
HMPPS = str(BIN / "hmpps")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str) -> None:
    print("+ hmpps", " ".join(args), flush=True)
    subprocess.run([HMPPS, *args], check=True, stdout=subprocess.DEVNULL)


def _requests(bundle: Path) -> list[tuple[str, str, dict[str, Any]]]:
    index = json.loads((bundle / "features" / "index.json").read_text())
    with open(bundle / "features" / "histories.jsonl", encoding="utf-8") as f:
        users = [json.loads(line) for line in f if line.strip()]
    products, queries = index["products"], index["queries"]
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(12):
        u = users[(7 * i) % len(users)]
        cands = [{"product_id": products[(11 * i + 5 * j) % len(products)], "score": float(10 - j)} for j in range(10)]
        body: dict[str, Any] = {"request_id": f"check-{i}", "user_id": u["user_id"],
                                "query": queries[(3 * i) % len(queries)], "candidates": cands}
        if i % 4 == 1:
            body["query"] = f"tail query number {i} for refactor checks"
        if i % 4 == 2:
            body["history"] = u["history"][:3]
            body["return_summaries"] = True
        if i % 4 == 3:
            body["candidates"] = [*cands[:5], {"product_id": "NOT-IN-CATALOG"}]
            body["top_n"] = 4
        out.append(("POST", "/rerank", body))
    out.append(("POST", "/rerank", {"user_id": "x", "query": " ", "candidates": [{"product_id": "a"}]}))
    out.append(("POST", "/rerank", {"user_id": "x", "query": "q", "candidates": []}))
    out.append(("POST", "/feedback", {"events": [
        {"type": "impression", "request_id": "check-0", "user_id": "u", "arm": "student", "ts": 1.0},
        {"type": "dwell", "request_id": "check-0", "user_id": "u", "arm": "student", "product_id": "p",
         "dwell_s": 9.0, "ts": 2.0}]}))
    out.append(("GET", "/info", {}))
    out.append(("GET", "/readyz", {}))
    return out


_VOLATILE = {"timings_ms", "seconds", "published_at", "loaded_at", "wall_s"}


def _scrub(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _scrub(v) for k, v in x.items() if k not in _VOLATILE}
    if isinstance(x, list):
        return [_scrub(v) for v in x]
    return x


def _serve_and_ask(bundle: Path, work: Path) -> list[dict[str, Any]]:
    import httpx

    port = _free_port()
    env = dict(os.environ, HMPPS_CACHE=str(work / "cache"))
    proc = subprocess.Popen([HMPPS, "serve", "--bundle", str(bundle), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit("the service exited during startup")
            time.sleep(0.5)
        else:
            raise SystemExit("the service did not become ready")
        answers = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for method, path, body in _requests(bundle):
                r = client.request(method, path, json=body if method == "POST" else None)
                answers.append({"request": [method, path, body], "status": r.status_code, "body": _scrub(r.json())})
        return answers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def fingerprint(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data, pipe = out / "data", out / "pipeline"
    _run("data", "synthetic", "--users", "80", "--products", "70", "--seed", "5", "--out", str(data))
    _run("pipeline", "--data", str(data), "--first-stage", "hem", "--profile", "tiny", "--out", str(pipe),
         "--set", "train_fraction=0.2", "--set", "score_train_fraction=0.3")
    metrics = {str(p.relative_to(pipe)): _scrub(json.loads(p.read_text())) for p in sorted(pipe.rglob("metrics.json"))}
    result = {"metrics": metrics, "responses": _serve_and_ask(pipe / "bundle", out)}
    path = out / "outputs.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}: {len(metrics)} metrics files, {len(result['responses'])} responses")
    return path


def compare(a: Path, b: Path) -> int:
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    if x == y:
        print(f"identical: {len(x['metrics'])} metrics.json files and {len(x['responses'])} responses")
        return 0
    for key in ("metrics", "responses"):
        if x[key] != y[key]:
            print(f"{key} differ")
    xs, ys = json.dumps(x, indent=1, sort_keys=True).splitlines(), json.dumps(y, indent=1, sort_keys=True).splitlines()
    import difflib

    print("\n".join(list(difflib.unified_diff(xs, ys, str(a), str(b), lineterm=""))[:80]))
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    a = p.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not a.out:
        p.error("give --out DIR or --compare BEFORE AFTER")
    fingerprint(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
