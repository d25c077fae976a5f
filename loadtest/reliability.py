"""``hmpps reliability``: the service under failure, overload, reload and time.

Each scenario runs a real ``redis-server`` (so it can be killed and
restarted, with its append-only file) and the real service in subprocesses,
drives open-loop load at them and reports figures:

    redis_kill   Redis SIGKILLed under load, restarted: 5xx, fail-open answers, time to recover
    overload     3x the saturation rate: fast 429s, p99 of the accepted requests
    reload       POST /admin/reload every 2 s under load: failed requests
    soak         constant load for N minutes: RSS growth of the service process
    fuzz         schemathesis over the OpenAPI spec (every route; admin with and without the token):
                 cases and server errors

The first three also send ``POST /events`` batches beside the reranks, and afterwards
count every event the service accepted in the events stream: an accepted event is never lost.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract import keys
from contract.errors import InputError
from contract.reports import markdown_table
from loadtest.mix import RequestMix
from loadtest.openloop import percentiles, run_open_loop

ADMIN_TOKEN = "reliability-suite"
SCENARIOS = ("redis_kill", "overload", "reload", "soak", "fuzz")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GaveUp(RuntimeError):
    """What a readiness probe raises when waiting longer cannot help (the process died)."""


def _wait(fn: Any, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if fn():
                return
        except GaveUp:
            raise
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout_s} s")


class RedisServer:
    def __init__(self, workdir: Path):
        if shutil.which("redis-server") is None:
            raise InputError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = _free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--save", "", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        _wait(lambda: redis.Redis(port=self.port).ping(), 20, "redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@contextmanager
def service(bundle: Path | None, redis_url: str, arms: Path | None = None, log: Path | None = None,
            cwd: Path | None = None, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` on a free loopback port (one bundle, or an arms file), ready; stopped after.

    ``cwd``: run another source tree's service (``-m`` puts the working directory first on the path)."""
    port = _free_port()
    e = os.environ | {"REDIS_URL": redis_url, "HMPPS_AUTO_PUBLISH": "1", "HMPPS_ADMIN_TOKEN": ADMIN_TOKEN,
                      "HMPPS_HEALTH_INTERVAL_S": "0.2"} | env
    model = ["--arms", str(arms)] if arms is not None else ["--bundle", str(bundle)]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen([sys.executable, "-m", "service", *model, "--port", str(port)], env=e,
                                stdout=out, stderr=out, cwd=cwd)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise GaveUp(f"the service exited during startup (code {proc.returncode})"
                                   + (f"; see {log}" if log else ""))
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        _wait(ready, 90, "the service")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


EVENT_BATCH = 5
EVENTS_PER_S = 10.0  # batches: 50 events/s beside the reranks


async def _events(url: str, prefix: str, batches_per_s: float, duration_s: float) -> dict[str, Any]:
    """``POST /events`` batches of new, unique events at a fixed rate: which were accepted (2xx)."""
    accepted: list[str] = []
    status: dict[str, int] = {}
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=5) as h:
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < duration_s:
            ids = [f"{prefix}-{i}-{j}" for j in range(EVENT_BATCH)]
            body = {"events": [{"event_id": e, "user_id": f"rel-user-{i % 50}", "product_id": f"rel-p{j}",
                                "type": "click", "timestamp": time.time()} for j, e in enumerate(ids)]}
            sent += len(ids)
            try:
                r = await h.post("/events", json=body)
                status[str(r.status_code)] = status.get(str(r.status_code), 0) + 1
                if r.status_code == 200:
                    accepted += ids
            except httpx.HTTPError as e:
                status[type(e).__name__] = status.get(type(e).__name__, 0) + 1
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / batches_per_s - time.perf_counter()))
    return {"sent": sent, "accepted_ids": accepted, "batch_status": status}


def _events_kept(redis_url: str, prefix: str, sent: dict[str, Any]) -> dict[str, Any]:
    """How many of the accepted events the events stream holds (read after the scenario)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    try:
        in_stream = {e.get(b"e", b"") for _, e in client.xrange(keys.EVENTS_STREAM)}
    finally:
        client.close()
    ids = {x for raw in in_stream for x in re.findall(rf'"event_id":"({re.escape(prefix)}-[0-9-]+)"', raw.decode())}
    accepted = set(sent["accepted_ids"])
    return {"sent": sent["sent"], "accepted": len(accepted), "in_stream": len(accepted & ids),
            "accepted_but_lost": len(accepted - ids), "batch_status": sent["batch_status"]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    timeline = rep.get("timeline", [])
    five = sum(1 for _, o, _, _ in timeline if o.startswith("5"))
    return {"requests": rep["requests"], "status": rep["status"], "fallback": rep["fallback"], "errors": rep["errors"],
            "server_errors_5xx": five, "latency": rep["latency"]}


async def _redis_kill(bundle: Path, redis: RedisServer, rps: float, mix: RequestMix) -> dict[str, Any]:
    kill_at, restart_at, duration = 8.0, 16.0, 30.0
    with service(bundle, redis.url, HMPPS_REQUEST_BUDGET_MS="50", HMPPS_REDIS_TIMEOUT_MS="20") as (url, _):
        ready: list[tuple[float, bool]] = []

        async def chaos(t0: float) -> None:
            async with httpx.AsyncClient(base_url=url) as h:
                killed = restarted = False
                while time.perf_counter() - t0 < duration:
                    t = time.perf_counter() - t0
                    if not killed and t >= kill_at:
                        await asyncio.to_thread(redis.kill)
                        killed = True
                    if not restarted and t >= restart_at:
                        await asyncio.to_thread(redis.start)
                        restarted = True
                    try:
                        ready.append((t, (await h.get("/readyz", timeout=1)).status_code == 200))
                    except httpx.HTTPError:
                        ready.append((t, False))
                    await asyncio.sleep(0.1)

        t0 = time.perf_counter()
        rep, _, events = await asyncio.gather(
            run_open_loop(url, rps, duration, mix, progress=False, keep_timeline=True), chaos(t0),
            _events(url, "kill", EVENTS_PER_S, duration))
    timeline = rep["timeline"]
    after = [(t, o, f) for t, o, f, _ in timeline if t >= restart_at]
    recovered = next((t for i, (t, o, f) in enumerate(after)
                      if all(o == "200" and not f2 for _, o, f2 in after[i:i + 20])), None)
    not_ready = [t for t, ok in ready if not ok]
    back_ready = next((t for t, ok in ready if t >= restart_at and ok), None)
    return _summary(rep) | {
        "events": _events_kept(redis.url, "kill", events),
        "kill_at_s": kill_at, "restart_at_s": restart_at,
        "fail_open_answers": sum(1 for _, o, f, _ in timeline if o == "200" and f),
        "recovery_s": None if recovered is None else round(recovered - restart_at, 3),
        "readyz_false_from_s": round(min(not_ready), 2) if not_ready else None,
        "readyz_true_again_after_restart_s": None if back_ready is None else round(back_ready - restart_at, 2),
    }


async def _overload(bundle: Path, redis: RedisServer, saturation: float, mix: RequestMix) -> dict[str, Any]:
    rate = 3 * saturation
    with service(bundle, redis.url) as (url, _):
        rep, events = await asyncio.gather(run_open_loop(url, rate, 10.0, mix, progress=False, keep_timeline=True),
                                           _events(url, "overload", EVENTS_PER_S, 10.0))
    tl = rep["timeline"]
    rejected = [lat for _, o, _, lat in tl if o == "429"]
    accepted = [lat for _, o, f, lat in tl if o == "200"]
    return _summary(rep) | {"events": _events_kept(redis.url, "overload", events),
                            "offered_rps": rate, "rejected_429": len(rejected),
                            "rejected_latency": percentiles(rejected), "accepted_latency": percentiles(accepted),
                            "client_send_lag_max_ms": rep["max_send_lag_ms"]}


async def _reload(bundle: Path, redis: RedisServer, rps: float, mix: RequestMix) -> dict[str, Any]:
    duration = 20.0
    with service(bundle, redis.url) as (url, _):
        codes: list[int] = []

        async def reloads() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as h:
                await asyncio.sleep(1.0)
                while len(codes) < int(duration / 2) - 1:
                    r = await h.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                    codes.append(r.status_code)
                    await asyncio.sleep(2.0)

        rep, _, events = await asyncio.gather(
            run_open_loop(url, rps, duration, mix, progress=False, keep_timeline=True), reloads(),
            _events(url, "reload", EVENTS_PER_S, duration))
    failed = sum(1 for _, o, f, _ in rep["timeline"] if o != "200" or f)
    return _summary(rep) | {"events": _events_kept(redis.url, "reload", events), "reloads": len(codes), "reload_status": sorted(set(codes)), "failed_or_fallback": failed}


async def _soak(bundle: Path, redis: RedisServer, rps: float, seconds: float, mix: RequestMix) -> dict[str, Any]:
    with service(bundle, redis.url) as (url, proc):
        samples: list[tuple[float, float]] = []

        async def sample(t0: float) -> None:
            while time.perf_counter() - t0 < seconds:
                samples.append((time.perf_counter() - t0, rss_mb(proc.pid)))
                await asyncio.sleep(5.0)

        t0 = time.perf_counter()
        rep, _ = await asyncio.gather(run_open_loop(url, rps, seconds, mix, progress=False), sample(t0))
    # growth from the first sample after a minute of warm-up (allocator and caches settle) to the end
    warm = [r for t, r in samples if t >= min(60.0, seconds / 4)] or [r for _, r in samples]
    growth = (warm[-1] - warm[0]) / warm[0] if warm else float("nan")
    return _summary(rep) | {"seconds": seconds, "rss_mb_first": samples[0][1] if samples else None,
                            "rss_mb_after_warmup": warm[0] if warm else None, "rss_mb_last": warm[-1] if warm else None,
                            "rss_growth": growth, "rss_samples": [(round(t, 1), round(r, 2)) for t, r in samples]}


def _fuzz(bundle: Path, redis: RedisServer, examples: int) -> dict[str, Any]:
    """schemathesis over every route of the OpenAPI spec, once with the admin token and once without."""
    out: dict[str, Any] = {"runs": {}}
    with service(bundle, redis.url) as (url, _), tempfile.TemporaryDirectory() as cwd:
        for name, auth in (("with admin token", ["-H", f"Authorization: Bearer {ADMIN_TOKEN}"]), ("without", [])):
            res = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", *auth,
                                  "--checks", "not_a_server_error", "--max-examples", str(examples),
                                  "--phases", "examples,fuzzing", "--no-color"],
                                 capture_output=True, text=True, timeout=1800, cwd=cwd)
            m = re.search(r"(\d+) generated", res.stdout)
            ops = re.search(r"(\d+) selected", res.stdout) or re.search(r"Operations:\s+(\d+)", res.stdout)
            out["runs"][name] = {"cases": int(m.group(1)) if m else None, "operations": int(ops.group(1)) if ops else None,
                                 "exit_code": res.returncode,
                                 "server_errors": 0 if res.returncode == 0 else len(re.findall(r"Server error", res.stdout)),
                                 "tail": res.stdout[-800:]}
    runs = out["runs"].values()
    out |= {"cases": sum(r["cases"] or 0 for r in runs), "server_errors": sum(r["server_errors"] for r in runs),
            "exit_code": max(r["exit_code"] for r in runs)}
    return out


def run_suite(bundle: Path, scenarios: tuple[str, ...], rps: float = 100, saturation: float = 300,
              soak_seconds: float = 600, fuzz_examples: int = 100) -> dict[str, Any]:
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise InputError(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    out: dict[str, Any] = {"rps": rps, "saturation_rps": saturation}
    with tempfile.TemporaryDirectory(prefix="hmpps-reliability-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            mix = lambda: RequestMix(bundle, 10, seed=int(time.time()))  # noqa: E731
            for name in scenarios:
                t = time.time()
                if name == "redis_kill":
                    out[name] = asyncio.run(_redis_kill(bundle, redis, rps, mix()))
                elif name == "overload":
                    out[name] = asyncio.run(_overload(bundle, redis, saturation, mix()))
                elif name == "reload":
                    out[name] = asyncio.run(_reload(bundle, redis, rps, mix()))
                elif name == "soak":
                    out[name] = asyncio.run(_soak(bundle, redis, rps, soak_seconds, mix()))
                elif name == "fuzz":
                    out[name] = _fuzz(bundle, redis, fuzz_examples)
                out[name]["wall_s"] = round(time.time() - t, 1)
                print(f"{name}: done in {out[name]['wall_s']} s", file=sys.stderr)
        finally:
            redis.kill()
    return out


def markdown(r: dict[str, Any], command: str) -> str:
    f = lambda x, d=2: "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"  # noqa: E731
    lines = ["# Reliability", "", f"Command: `{command}`", ""]
    if "redis_kill" in r:
        k = r["redis_kill"]
        lines += ["## Redis killed under load, then restarted", "",
                  f"{r['rps']:g} req/s for 30 s; `redis-server` SIGKILLed at {k['kill_at_s']:g} s and restarted at "
                  f"{k['restart_at_s']:g} s (append-only file, so the features come back).", "",
                  markdown_table(["requests", "5xx", "fail-open answers", "fallbacks by reason", "client errors",
                                  "recovery after restart", "/readyz false from", "/readyz true again after restart"],
                                 [[k["requests"], k["server_errors_5xx"], k["fail_open_answers"], k["fallback"], k["errors"],
                                   f"{f(k['recovery_s'])} s", f"{f(k['readyz_false_from_s'])} s",
                                   f"{f(k['readyz_true_again_after_restart_s'])} s"]], align="rrrllrrr"), "",
                  *_events_line(k)]
    if "overload" in r:
        o = r["overload"]
        lines += ["## Overload at 3x saturation", "",
                  f"{o['offered_rps']:g} req/s offered for 10 s (saturation taken as {r['saturation_rps']:g} req/s).", "",
                  markdown_table(["requests", "200", "429", "5xx", "429 p50 / p99 ms", "accepted p50 / p99 ms",
                                  "client errors"],
                                 [[o["requests"], o["status"].get("200", 0), o["rejected_429"], o["server_errors_5xx"],
                                   f"{f(o['rejected_latency']['p50_ms'])} / {f(o['rejected_latency']['p99_ms'])}",
                                   f"{f(o['accepted_latency']['p50_ms'])} / {f(o['accepted_latency']['p99_ms'])}",
                                   o["errors"]]], align="rrrrrrl"), "",
                  f"The load generator's largest send lag was {o['client_send_lag_max_ms']} ms: on 2 shared cores the "
                  "offered rate is partly limited by the client itself.", "", *_events_line(o)]
    if "reload" in r:
        rl = r["reload"]
        lines += ["## Bundle reload under load", "",
                  f"{r['rps']:g} req/s for 20 s with `POST /admin/reload` every 2 s.", "",
                  markdown_table(["requests", "reloads", "reload status codes", "failed or fail-open requests", "p99 ms"],
                                 [[rl["requests"], rl["reloads"], rl["reload_status"], rl["failed_or_fallback"],
                                   f(rl["latency"]["p99_ms"])]], align="rrlrr"), "", *_events_line(rl)]
    if "soak" in r:
        s = r["soak"]
        lines += ["## Soak", "", f"{r['rps']:g} req/s for {s['seconds']:g} s; RSS of the service process every 5 s.", "",
                  markdown_table(["requests", "errors", "RSS first MB", "RSS after warm-up MB", "RSS last MB",
                                  "growth after warm-up", "p99 ms"],
                                 [[s["requests"], sum(s["errors"].values()) + s["server_errors_5xx"], f(s["rss_mb_first"], 1),
                                   f(s["rss_mb_after_warmup"], 1), f(s["rss_mb_last"], 1), f"{f(100 * s['rss_growth'])}%",
                                   f(s["latency"]["p99_ms"])]], align="r" * 7), ""]
    if "fuzz" in r:
        z = r["fuzz"]
        lines += ["## Schemathesis fuzz", "", "Every route of the OpenAPI spec, `/admin/*` included; once with the admin "
                  "token and once without.", "",
                  markdown_table(["run", "operations", "cases", "server errors", "exit code"],
                                 [[name, x.get("operations"), x["cases"], x["server_errors"], x["exit_code"]]
                                  for name, x in z.get("runs", {"all": z}).items()], align="lrrrr"), ""]
    return "\n".join(lines)


def _events_line(s: dict[str, Any]) -> list[str]:
    e = s.get("events")
    if not e:
        return []
    return [f"`POST /events` beside it ({EVENT_BATCH} events a batch, {EVENTS_PER_S:g} batches/s): {e['sent']} events "
            f"sent, {e['accepted']} accepted (batches by status: {e['batch_status']}), {e['in_stream']} of the "
            f"accepted in the events stream afterwards, **{e['accepted_but_lost']} accepted but lost**.", ""]
