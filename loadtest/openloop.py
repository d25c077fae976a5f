"""``hmpps loadtest``: an open-loop load generator for POST /rerank.

Requests are scheduled at a constant arrival rate, whether or not earlier ones
have answered, and each latency is measured from its *scheduled* send time. A
server (or client) that falls behind therefore shows its queueing in the
percentiles instead of hiding it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table
from loadtest.mix import RequestMix

MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)  # seconds, successful (2xx) requests
    status: Counter[str] = field(default_factory=Counter)
    fallback: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0  # sends that left more than 1 ms after their schedule (client-side lag)
    max_send_lag_s: float = 0.0
    # (scheduled time, outcome: status code or error name, fallback or "", latency s) per request
    timeline: list[tuple[float, str, str, float]] = field(default_factory=list)


def percentiles(lat_s: list[float]) -> dict[str, float | None]:
    if not lat_s:
        return {k: None for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "mean_ms", "max_ms")}
    a = np.asarray(lat_s) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "p99_9_ms": float(np.percentile(a, 99.9)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


async def _one(send: Any, body: Any, scheduled: float, out: Outcome, timeout_s: float) -> None:
    lag = time.perf_counter() - scheduled
    out.max_send_lag_s = max(out.max_send_lag_s, lag)
    if lag > 0.001:
        out.late_starts += 1
    try:
        r = await send(body, timeout_s)
        done = time.perf_counter()
        out.status[str(r.status_code)] += 1
        fb = ""
        if 200 <= r.status_code < 300:
            out.latencies.append(done - scheduled)
            fb = r.json().get("fallback") or ""
            out.fallback[fb or "none"] += 1
        out.timeline.append((scheduled, str(r.status_code), fb, done - scheduled))
    except Exception as e:  # noqa: BLE001 - every failure is counted by type
        out.errors[type(e).__name__] += 1
        out.timeline.append((scheduled, type(e).__name__, "", time.perf_counter() - scheduled))


def run(coro: Any) -> Any:
    """Run the generator on uvloop when installed: its lower wake-up overhead is
    latency the service would otherwise be charged for (see docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


SERVER_HISTOGRAM = "hmpps_rerank_request_seconds_bucket"


def parse_buckets(metrics_text: str, name: str = SERVER_HISTOGRAM) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram, summed over its other labels."""
    out: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, prev_bound, prev_count = q * counts[-1], 0.0, 0.0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_bound
            return prev_bound + (b - prev_bound) * (rank - prev_count) / max(c - prev_count, 1e-12)
        prev_bound, prev_count = b, c
    return None


async def _server_buckets(client: Any) -> dict[float, float] | None:
    try:
        return parse_buckets((await client.get("/metrics", timeout=5.0)).text)
    except Exception:  # noqa: BLE001 - a server without our metrics: report client-side figures only
        return None


async def _scorer_name(client: Any) -> str:
    """What the target scores with (GET /info), so reports of peers cannot be mixed up."""
    try:
        r = await client.get("/info", timeout=5.0)
        return str(r.json().get("scorer", "student"))
    except Exception:  # noqa: BLE001 - an older or foreign server: label it unknown, still measure it
        return "unknown"


async def run_open_loop(url: str, rps: float, duration_s: float, mix: RequestMix, timeout_s: float = 2.0,
                        max_in_flight: int = 2000, progress: bool = True, transport: Any = None,
                        keep_timeline: bool = False) -> dict[str, Any]:
    import httpx

    from loadtest.rawhttp import RawHTTPClient

    n_total = int(rps * duration_s)
    out = Outcome()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    raw = RawHTTPClient(url, max_in_flight) if transport is None else None
    # bodies are built (and for the raw client, encoded) up front: the send loop does no work
    bodies: list[Any] = [raw.encode("/rerank", mix.body()) if raw else mix.body() for _ in range(n_total)]
    async with httpx.AsyncClient(base_url=url, limits=limits, transport=transport) as client:

        async def via_httpx(body: Any, timeout: float) -> Any:
            return await client.post("/rerank", json=body, timeout=timeout)

        send = raw.send if raw else via_httpx
        scorer = await _scorer_name(client)
        before = await _server_buckets(client)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.05
        last_print = start
        for i, body in enumerate(bodies):
            scheduled = start + i / rps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_in_flight:
                out.errors["client_in_flight_cap"] += 1  # bounded: never queue without limit on our side
                continue
            t = asyncio.create_task(_one(send, body, scheduled, out, timeout_s))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            now = time.perf_counter()
            if progress and now - last_print >= 1.0:
                last_print = now
                p = percentiles(out.latencies[-2000:])
                sys.stderr.write(f"\r  t={now - start:5.1f}s sent={i + 1}/{n_total} ok={len(out.latencies)} "
                                 f"in-flight={len(tasks)} errors={sum(out.errors.values())} "
                                 f"p50={p['p50_ms'] or 0:.2f}ms p99={p['p99_ms'] or 0:.2f}ms   ")
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 1)
        elapsed = time.perf_counter() - start
        after = await _server_buckets(client) if before is not None else None
        if raw is not None:
            await raw.aclose()
    if progress:
        sys.stderr.write("\n")
    non2xx = sum(v for k, v in out.status.items() if not k.startswith("2"))
    return {
        "url": url, "scorer": scorer, "target_rps": rps, "duration_s": duration_s, "requests": n_total,
        "achieved_rps": round(len(out.latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "ok": len(out.latencies), "status": dict(out.status), "fallback": dict(out.fallback),
        "errors": dict(out.errors), "error_rate": (non2xx + sum(out.errors.values())) / max(1, n_total),
        "late_starts": out.late_starts, "max_send_lag_ms": round(out.max_send_lag_s * 1000, 3),
        "candidates": mix.k, "latency": percentiles(out.latencies),
        # the service's own histogram over this run: what the client adds on top is queueing in the
        # kernel, the network stack and the generator itself (interpolated within 1 ms to 1 s buckets)
        "server_latency": None if not (before is not None and after) else {
            k: (None if v is None else round(v * 1000, 3)) for k, v in
            (("p50_ms", histogram_quantile(0.5, before, after)), ("p99_ms", histogram_quantile(0.99, before, after)))},
    } | ({"timeline": [(round(t - start, 4), o, f, round(lat, 5)) for t, o, f, lat in sorted(out.timeline)]}
         if keep_timeline else {})


def markdown(rep: dict[str, Any]) -> str:
    lat = rep["latency"]
    f = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    return "\n".join([
        f"### Open loop: {rep['target_rps']} req/s for {rep['duration_s']} s, K={rep['candidates']}, {rep['url']}"
        f" (scorer: {rep.get('scorer', 'unknown')})", "",
        markdown_table(["requests", "ok", "achieved rps", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "error rate"],
                       [[rep["requests"], rep["ok"], rep["achieved_rps"], f(lat["p50_ms"]), f(lat["p90_ms"]),
                         f(lat["p99_ms"]), f(lat["p99_9_ms"]), f(lat["max_ms"]), f"{rep['error_rate']:.4f}"]],
                       align="r" * 9), "",
        f"Status codes: {json.dumps(rep['status'])}; fallbacks: {json.dumps(rep['fallback'])}; "
        f"client errors: {json.dumps(rep['errors'])}; sends late by > 1 ms: {rep['late_starts']} "
        f"(max {rep['max_send_lag_ms']} ms).", ""]
        + ([f"The service's own histogram over the run: p50 {f(srv['p50_ms'])} ms, p99 {f(srv['p99_ms'])} ms.", ""]
           if (srv := rep.get("server_latency")) else []))


def validate(url: str, rps: float, duration_s: float, allow_remote: bool) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"--url {url!r}: expected http://host:port")
    if not allow_remote and not is_loopback(url):
        raise InputError(f"--url {url!r} is not a loopback address; pass --allow-remote to load-test another host")
    if rps <= 0 or duration_s <= 0:
        raise InputError("--rps and --duration must be positive")
    if rps * duration_s > MAX_REQUESTS or duration_s > MAX_DURATION_S:
        raise InputError(f"a run is capped at {MAX_REQUESTS} requests and {MAX_DURATION_S} s")


def write_reports(rep: dict[str, Any], out: Path) -> None:
    from training.artifacts import atomic_write_text, write_json

    write_json(out, rep)
    atomic_write_text(out.with_suffix(".md"), markdown(rep))
