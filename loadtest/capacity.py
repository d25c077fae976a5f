"""``hmpps bench-capacity``: what one machine serves, and what Redis holds, measured.

Every figure comes from real processes on this machine: Debian's ``redis-server``
(single node, and a 3+3 Redis Cluster from ``loadtest.redis_cluster``), the
service as ``python -m service``, and ``wrk`` as the closed-loop generator.

1. HTTP share: ``wrk -c1`` (and ``-cN``) on ``/healthz`` and ``/rerank`` of the
   same service, one after the other in one run; ``/rerank`` requests rotate
   over a few hundred bodies drawn from the bundle (users, queries, K candidates).
2. Open loop at a fixed rate (``hmpps loadtest``'s generator): client-seen p50/p99.
3. Saturation: ``wrk -cN`` against one worker, then two workers.
4. Redis memory: a bundle scaled to ``products`` synthetic product vectors (and
   summaries), and one with ``users`` synthetic histories of each length, each
   published into an empty ``redis-server``; ``INFO memory`` ``used_memory``
   before and after, divided by the count, times 1M (linear: one key per
   product vector, one per summary, one sorted set per user; Redis's own
   overhead per key does not depend on how many there are).
5. Publish throughput at that size, single node and cluster: a full version
   (``hmpps publish``), and an incremental upsert of new products, with the
   product encoder's time apart from the Redis writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.bundle import MANIFEST, read_manifest, write_manifest
from contract.codec import vector_bytes
from contract.errors import InputError
from contract.reports import markdown_table
from loadtest.mix import RequestMix
from loadtest.reliability import RedisServer, service

WRK_BODIES = 300


@dataclass
class CapacityConfig:
    duration_s: float = 10.0  # each wrk run
    connections: int = 16  # saturation runs
    rate: float = 100.0  # the open-loop run
    rate_duration_s: float = 30.0
    products: int = 100_000
    users: int = 100_000
    history_lengths: tuple[int, ...] = (10, 50)
    upsert_products: int = 20_000  # Redis writes of an upsert (features precomputed)
    encode_products: int = 200  # the product encoder's own throughput, end to end
    cluster: bool = True

    def check(self) -> None:
        if self.duration_s < 1 or self.rate_duration_s < 1 or self.rate <= 0:
            raise InputError("durations must be at least 1 s and the rate positive")
        if self.products < 1000 or self.users < 1000:
            raise InputError("--products and --users must be at least 1000 (the figures are extrapolated per 1M)")
        if self.connections < 1 or not self.history_lengths or min(self.history_lengths) < 1:
            raise InputError("connections and history lengths must be at least 1")


# ---------------------------------------------------------------- wrk


def _wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise InputError("wrk is not installed (Debian: apt-get install wrk)")
    return path


def wrk_script(bundle: Path, path: Path, k: int = 10, seed: int = 0) -> Path:
    """A wrk Lua script that POSTs /rerank bodies drawn from the bundle, in rotation."""
    mix = RequestMix(bundle, k=k, seed=seed)
    bodies = [json.dumps(mix.body(), separators=(",", ":")) for _ in range(WRK_BODIES)]
    lines = ["local bodies = {"] + [f"[==[{b}]==]," for b in bodies] + ["}", "local i = 0",
             'local headers = {["Content-Type"] = "application/json"}',
             "request = function()", "  i = i % #bodies + 1",
             '  return wrk.format("POST", "/rerank", headers, bodies[i])', "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_wrk(text: str) -> dict[str, Any]:
    def ms(v: str, unit: str) -> float:
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    out: dict[str, Any] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}  # type: ignore[union-attr]
    out["requests"] = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[f"p{q}_ms"] = round(ms(m.group(1), m.group(2)), 3) if m else None
    return out


def run_wrk(url: str, connections: int, duration_s: float, script: Path | None = None) -> dict[str, Any]:
    cmd = [_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    text = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    shown = ["wrk", *cmd[1:], url]
    if script is not None:
        shown[shown.index(str(script))] = "rerank.lua"  # the generated bodies, not a temporary path
    return parse_wrk(text) | {"connections": connections, "command": " ".join(shown)}


def _fallbacks(url: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^hmpps_rerank_requests_total\{[^}]*status="fallback"[^}]*\} ([\d.e+]+)$',
                                            text, re.M))


def _warm(url: str, script: Path) -> None:
    run_wrk(url + "/rerank", 1, 1, script)


# ---------------------------------------------------------------- scaled bundles


def _link_models(base: Path, out: Path) -> None:
    """Everything of the base bundle except its features (hard links: the encoders are large)."""
    for src in base.rglob("*"):
        rel = src.relative_to(base)
        if src.is_dir() or rel.parts[0] == "features" or rel.name == MANIFEST:
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def scaled_bundle(base: Path, out: Path, products: int, storage: str, seed: int = 0) -> Path:
    """A bundle shaped like ``base`` with ``products`` synthetic product vectors (the base's rows plus
    noise: real value ranges, distinct vectors) and the base's summaries reused; no users."""
    m = read_manifest(base)
    spec = m.spec
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    _link_models(base, out)
    feats = out / "features"
    feats.mkdir()
    base_index = json.loads((base / m.features["index"]).read_text())
    base_products = np.load(base / m.features["products"])
    ids = [f"CAP{i:08d}" for i in range(products)]
    rows = base_products[rng.integers(len(base_products), size=products)]
    rows = (rows + rng.normal(0, 0.01, rows.shape)).astype(np.float32)
    np.save(feats / "products.npy", rows)
    shutil.copy2(base / m.features["queries"], feats / "queries.npy")
    (feats / "index.json").write_text(json.dumps({"products": ids, "queries": base_index["queries"]}))
    summaries = [json.loads(x)["summary"] for x in (base / m.features["summaries"]).read_text().splitlines() if x]
    with open(feats / "summaries.jsonl", "w") as f:
        for i, pid in enumerate(ids):
            f.write(json.dumps({"product_id": pid, "summary": summaries[i % len(summaries)]}) + "\n")
    (feats / "histories.jsonl").write_text("")
    write_manifest(out, f"capacity-{storage}", m.dataset, m.dataset_fingerprint,
                   type(spec)(**{**asdict(spec), "storage": storage}), m.models,
                   dict(m.features) | {"products": "features/products.npy", "queries": "features/queries.npy",
                                       "index": "features/index.json", "summaries": "features/summaries.jsonl",
                                       "histories": "features/histories.jsonl"},
                   {"capacity_benchmark": {"base": m.version, "products": products}})
    return out


def _used_memory(client: Any) -> int:
    info = client.info("memory")
    if isinstance(info, dict) and "used_memory" not in info:  # a cluster client: one dict per node
        return sum(int(v["used_memory"]) for v in info.values())
    return int(info["used_memory"])


@contextmanager
def _redis(kind: str, workdir: Path) -> Iterator[tuple[str, Any]]:
    """An empty redis-server (``single``) or 3+3 cluster, and a client for it."""
    from service.infra.redis_conn import connect

    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "single":
        server = RedisServer(workdir)
        server.start()
        handle = connect(server.url, cluster="off")
        try:
            handle.client.config_set("appendonly", "no")
            yield server.url, handle.client
        finally:
            handle.close()
            server.kill()
    else:
        from loadtest.redis_cluster import LocalCluster

        cluster = LocalCluster(workdir / "cluster").start()
        handle = connect(cluster.url, cluster="on")
        try:
            yield cluster.url, handle.client
        finally:
            handle.close()
            cluster.stop()


def _history_rows(users: int, length: int, ids: list[str], prefix: str, seed: int) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for u in range(users):
        t0 = 1.7e9 + u
        yield {"user_id": f"{prefix}{u:08d}", "history": [ids[i] for i in rng.integers(len(ids), size=length)],
               "timestamps": [t0 - 86400.0 * j for j in range(length)]}


def memory_and_publish(base: Path, cfg: CapacityConfig, workdir: Path) -> dict[str, Any]:
    from contract.histories import seed_histories
    from contract.publish import publish

    out: dict[str, Any] = {"products": {}, "users": {}, "publish": {}, "upsert": {}}
    spec = read_manifest(base).spec
    for storage in ("float32", "float16"):
        b = scaled_bundle(base, workdir / f"products-{storage}", cfg.products, storage)
        ids = json.loads((b / "features" / "index.json").read_text())["products"]
        for kind in ("single", "cluster") if cfg.cluster else ("single",):
            with _redis(kind, workdir / f"r-{storage}-{kind}") as (_, client):
                before = _used_memory(client)
                t = time.perf_counter()
                publish(b, client, activate=True)
                sec = time.perf_counter() - t
                used = _used_memory(client) - before
                if kind == "single":
                    out["products"][storage] = {
                        "vector_bytes": vector_bytes(spec.product_dim, storage),
                        "bytes_per_product": round(used / cfg.products, 1),
                        "gib_per_1m_products": round(used / cfg.products * 1e6 / 2**30, 3)}
                out["publish"][f"{storage}/{kind}"] = {"products": cfg.products, "seconds": round(sec, 2),
                                                       "products_per_s": round(cfg.products / sec)}
                if storage != "float16":
                    continue
                out["upsert"][kind] = _upsert(b, client, cfg)
                if kind != "single":
                    continue
                for length in cfg.history_lengths:  # users' histories over this catalogue, one length at a time
                    before = _used_memory(client)
                    t = time.perf_counter()
                    seed_histories(client, _history_rows(cfg.users, length, ids, f"CAP{length}U", length),
                                   max(cfg.history_lengths), 0)
                    sec = time.perf_counter() - t
                    used = _used_memory(client) - before
                    out["users"][str(length)] = {"bytes_per_user": round(used / cfg.users, 1),
                                                 "gib_per_1m_users": round(used / cfg.users * 1e6 / 2**30, 3),
                                                 "users_per_s": round(cfg.users / sec)}
        shutil.rmtree(b)
    return out


class _Precomputed:
    """The upsert's Redis side alone: features already computed (the encoder is timed apart)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def encode(self, products: list[tuple[str, Path | None]]) -> np.ndarray:
        return self.rows[: len(products)]


def _upsert(bundle: Path, client: Any, cfg: CapacityConfig) -> dict[str, Any]:
    import dataclasses

    from contract.events import Product
    from service.core.bundle import load_bundle
    from service.core.products import upsert_products

    loaded = load_bundle(bundle)
    products = [Product(product_id=f"NEW{i:08d}", title=f"new product {i}", brand="capacity", category=("bench",),
                        description=f"a product added after training, number {i}", updated_at=1.8e9)
                for i in range(cfg.upsert_products)]
    rows = np.load(bundle / "features" / "products.npy", mmap_mode="r")
    pre = dataclasses.replace(loaded, product_encoder=_Precomputed(np.asarray(rows[: len(products)])))
    t = time.perf_counter()
    res = upsert_products(client, pre, products)
    writes = time.perf_counter() - t
    assert res.written == len(products), res
    sample = products[: cfg.encode_products]
    t = time.perf_counter()
    loaded.product_encoder.encode([(p.title + " " + p.description, None) for p in sample])  # type: ignore[union-attr]
    enc = time.perf_counter() - t
    return {"products": len(products), "write_seconds": round(writes, 2),
            "writes_per_s": round(len(products) / writes), "encoder_products_per_s": round(len(sample) / enc, 1)}


# ---------------------------------------------------------------- HTTP


def http_figures(bundle: Path, cfg: CapacityConfig, workdir: Path) -> dict[str, Any]:
    from loadtest.openloop import run, run_open_loop

    out: dict[str, Any] = {}
    script = wrk_script(bundle, workdir / "rerank.lua")
    server = RedisServer(workdir)
    server.start()
    try:
        from contract.publish import publish
        from service.infra.redis_conn import connect

        h = connect(server.url, cluster="off")
        h.client.config_set("appendonly", "no")
        publish(bundle, h.client, activate=True)
        h.close()
        with service(bundle, server.url, log=workdir / "service-1.log") as (url, _):
            _warm(url, script)
            share = {}
            for c in (1, 4):
                hz = run_wrk(url + "/healthz", c, cfg.duration_s)
                rr = run_wrk(url + "/rerank", c, cfg.duration_s, script)
                share[str(c)] = {"healthz": hz, "rerank": rr, "share": round(rr["rps"] / hz["rps"], 4)}
            out["share"] = share
            rep = run(run_open_loop(url, cfg.rate, cfg.rate_duration_s, RequestMix(bundle, k=10, seed=3),
                                    progress=False))
            out["open_loop"] = {k: rep[k] for k in ("target_rps", "achieved_rps", "requests", "ok", "status",
                                                    "fallback", "errors", "error_rate", "latency",
                                                    "server_latency", "max_send_lag_ms")}
            out["saturation"] = {"1": _saturate(url, cfg, script)}
        # the same /rerank path with no Redis read and no model (a passthrough arm): the HTTP stack's own cost,
        # the fair yardstick for what the model's share of a request costs
        arms = workdir / "passthrough.yaml"
        arms.write_text(json.dumps({"experiment": "capacity", "salt": "s",
                                    "arms": [{"name": "control", "weight": 1, "bundle": "passthrough"}]}))
        with service(None, server.url, arms=arms, log=workdir / "service-passthrough.log") as (url, _):
            _warm(url, script)
            for c, s in share.items():
                s["passthrough"] = run_wrk(url + "/rerank", int(c), cfg.duration_s, script)
                s["share_of_passthrough"] = round(s["rerank"]["rps"] / s["passthrough"]["rps"], 4)
        with service(bundle, server.url, log=workdir / "service-2.log", HMPPS_WORKERS="2") as (url, _):
            _warm(url, script)
            out["saturation"]["2"] = _saturate(url, cfg, script)
    finally:
        server.kill()
    return out


def _saturate(url: str, cfg: CapacityConfig, script: Path) -> dict[str, Any]:
    before = _fallbacks(url)
    r = run_wrk(url + "/rerank", cfg.connections, cfg.duration_s, script)
    r["fallbacks"] = int(_fallbacks(url) - before)
    return r


# ---------------------------------------------------------------- report


def run_capacity(bundle: Path, cfg: CapacityConfig, parts: tuple[str, ...] = ("http", "redis")) -> dict[str, Any]:
    cfg.check()
    bundle = Path(bundle)
    read_manifest(bundle)
    if cfg.cluster and "redis" in parts:
        from loadtest.redis_cluster import available

        why = available()
        if why:
            raise InputError(f"the cluster figures need a Redis Cluster: {why} (or pass --no-cluster)")
    rep: dict[str, Any] = {"bundle": read_manifest(bundle).version, "config": asdict(cfg), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="hmpps-capacity-") as tmp:
        if "http" in parts:
            rep["http"] = http_figures(bundle, cfg, Path(tmp))
        if "redis" in parts:
            rep["redis"] = memory_and_publish(bundle, cfg, Path(tmp))
    return rep


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(rep: dict[str, Any], command: str) -> str:
    lines = [f"# Capacity: bundle {rep['bundle']}, {rep['cores']} cores", "", f"`{command}`", ""]
    http = rep.get("http")
    if http:
        rows = []
        for c, s in http["share"].items():
            pt = s.get("passthrough")
            rows.append([f"-c{c}", f"{s['healthz']['rps']:.0f}", f"{s['rerank']['rps']:.0f}", f"{100 * s['share']:.1f}%",
                         "-" if pt is None else f"{pt['rps']:.0f}",
                         "-" if pt is None else f"{100 * s['share_of_passthrough']:.1f}%",
                         _ms(s["rerank"]["p50_ms"]), _ms(s["rerank"]["p99_ms"]),
                         s["rerank"]["non_2xx"] + s["rerank"]["socket_errors"]])
        lines += ["## /rerank against /healthz and against the passthrough arm (wrk, one worker each)", "",
                  markdown_table(["wrk", "/healthz req/s", "/rerank req/s", "share of /healthz",
                                  "passthrough /rerank req/s", "share of passthrough", "/rerank p50 ms", "p99 ms",
                                  "errors"], rows), ""]
        o = http["open_loop"]
        lines += [f"## Open loop at {o['target_rps']:.0f} requests/s", "",
                  markdown_table(["achieved req/s", "client p50 ms", "client p99 ms", "server p50 ms", "server p99 ms",
                                  "errors", "fallbacks"],
                                 [[o["achieved_rps"], _ms(o["latency"]["p50_ms"]), _ms(o["latency"]["p99_ms"]),
                                   _ms((o["server_latency"] or {}).get("p50_ms")),
                                   _ms((o["server_latency"] or {}).get("p99_ms")),
                                   round(o["error_rate"] * o["requests"]),
                                   sum(v for k, v in o["fallback"].items() if k != "none")]]), ""]
        rows = [[w, f"{s['rps']:.0f}", _ms(s["p50_ms"]), _ms(s["p99_ms"]), s["non_2xx"] + s["socket_errors"],
                 s["fallbacks"]] for w, s in http["saturation"].items()]
        lines += [f"## Saturation (wrk -c{rep['config']['connections']})", "",
                  markdown_table(["workers", "req/s", "p50 ms", "p99 ms", "errors", "fallbacks"], rows), ""]
    red = rep.get("redis")
    if red:
        cfg = rep["config"]
        rows = [[s, p["vector_bytes"], p["bytes_per_product"], p["gib_per_1m_products"]] for s, p in red["products"].items()]
        lines += [f"## Redis memory (measured at {cfg['products']:,} products / {cfg['users']:,} users, "
                  "`INFO memory` used_memory, extrapolated linearly)", "",
                  markdown_table(["product storage", "vector bytes", "bytes per product (vector + summary + keys)",
                                  "GiB per 1M products"], rows), "",
                  markdown_table(["history length", "bytes per user", "GiB per 1M users", "users/s seeded"],
                                 [[n, u["bytes_per_user"], u["gib_per_1m_users"], u["users_per_s"]]
                                  for n, u in red["users"].items()]), ""]
        rows = [[k, v["products"], v["seconds"], v["products_per_s"]] for k, v in red["publish"].items()]
        lines += ["## Publish throughput", "", markdown_table(["full version (storage/redis)", "products", "seconds",
                                                               "products/s"], rows), ""]
        rows = [[k, v["products"], v["write_seconds"], v["writes_per_s"], v["encoder_products_per_s"]]
                for k, v in red["upsert"].items()]
        lines += [markdown_table(["incremental upsert (float16)", "products", "write seconds", "writes/s",
                                  "product encoder products/s (1 process)"], rows), ""]
    return "\n".join(lines)
