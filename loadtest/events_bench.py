"""``hmpps bench-events``: how many events per second ``POST /events`` records.

Closed loop: ``concurrency`` clients each post batches of ``batch`` new purchase
events (real users and products drawn from a bundle) back to back for
``seconds``; every event id is new, so each one is a real history append.
Bounded in time and count, loopback only unless allowed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table
from loadtest.mix import RequestMix
from loadtest.openloop import is_loopback, percentiles

MAX_SECONDS = 300


async def _run(url: str, mix: RequestMix, seconds: float, batch: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    status: dict[str, int] = {}
    sent = 0
    rng = np.random.default_rng(1)
    end = time.perf_counter() + seconds

    async def worker(w: int, client: httpx.AsyncClient) -> None:
        nonlocal sent
        n = 0
        while time.perf_counter() < end:
            now = time.time()
            events = [{"event_id": f"bench-{w}-{n}-{i}", "type": "purchase", "timestamp": now,
                       "user_id": mix.users[int(rng.integers(len(mix.users)))],
                       "product_id": mix.products[int(rng.integers(len(mix.products)))]} for i in range(batch)]
            n += 1
            t = time.perf_counter()
            try:
                r = await client.post("/events", json={"events": events})
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            latencies.append(time.perf_counter() - t)
            status[key] = status.get(key, 0) + 1
            if key == "200":
                sent += batch

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        await asyncio.gather(*(worker(w, client) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"url": url, "seconds": round(wall, 2), "batch": batch, "concurrency": concurrency, "events": sent,
            "events_per_s": round(sent / wall, 1), "batches": len(latencies), "status": status,
            "batch_latency": percentiles(latencies)}


def run_events_bench(url: str, bundle: Path, seconds: float, batch: int, concurrency: int,
                     allow_remote: bool = False) -> dict[str, Any]:
    if not allow_remote and not is_loopback(url):
        raise InputError(f"--url {url!r} is not a loopback address; pass --allow-remote to load another host")
    if not 0 < seconds <= MAX_SECONDS:
        raise InputError(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 1 <= batch <= 500 or not 1 <= concurrency <= 64:
        raise InputError("--batch must be 1..500 and --concurrency 1..64")
    return asyncio.run(_run(url.rstrip("/"), RequestMix(bundle), seconds, batch, concurrency))


def markdown(rep: dict[str, Any], command: str) -> str:
    lat = rep["batch_latency"]

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"
    return "\n".join([
        f"### POST /events, batches of {rep['batch']}, {rep['concurrency']} client(s)", "",
        f"Command: `{command}`", "",
        markdown_table(["events recorded", "events/s", "batches", "batch p50 ms", "batch p99 ms", "status"],
                       [[rep["events"], rep["events_per_s"], rep["batches"], f(lat["p50_ms"]), f(lat["p99_ms"]),
                         rep["status"]]], align="rrrrrl"), ""])
