"""Warm-up from real requests: before ``/readyz`` turns ready, on start and on reload.

The first requests a fresh process (or a newly loaded bundle) serves pay for what nothing has
touched yet: Redis connections, ONNX Runtime's first runs at the request's shapes, the decode
and selection code, tail queries' encoder. ``warm_from_traffic`` pays it with the most recent
served requests from the served-rankings log (``hmpps:served``), replayed through the fetch and
the scorer of every loaded bundle, or with synthetic requests drawn from the bundle's own
catalogue when there is no log yet. Replays are not traffic: no metrics, no served log.
"""

from __future__ import annotations

import json
import logging
import time

import anyio
import numpy as np

from contract.served import ServedRanking
from service.core.bundle import LoadedBundle
from service.core.runtime import Runtime
from service.core.scoring import Listed, score_sync
from service.infra.store import FeatureStore

log = logging.getLogger("hmpps.service")
K = 10


def _synthetic(bundle: LoadedBundle, count: int) -> list[tuple[str, str, list[str], list[float | None]]]:
    index = json.loads((bundle.path / bundle.manifest.features["index"]).read_text())
    rng = np.random.default_rng(0)
    products, queries = index["products"], index["queries"] or ["warm up"]
    k = min(K, len(products))
    return [("warmup", queries[i % len(queries)], [str(p) for p in rng.choice(products, size=k, replace=False)],
             [float(k - j) for j in range(k)]) for i in range(count)]


async def warm_from_traffic(runtime: Runtime, store: FeatureStore, count: int) -> dict[str, dict[str, float]]:
    """Replay up to ``count`` recent served requests on each loaded bundle; per version: how many, from where,
    seconds. A failure ends that bundle's warm-up with a log line: warm-up never keeps a service from starting."""
    bundles = {b.version: b for b in runtime.bundles.values() if b is not None}
    if count <= 0 or not bundles:
        return {}
    recent: list[ServedRanking] = []
    try:
        for raw in await store.recent_served(count):
            try:
                recent.append(ServedRanking.from_json(raw))
            except ValueError:
                continue
    except Exception as e:  # noqa: BLE001 - no log to read: synthetic requests below
        log.warning("warm-up could not read the served log: %s", e)
    replays = [(r.user_id, r.query, [i.product_id for i in sorted(r.items, key=lambda i: i.original_position)],
                [i.caller_score for i in sorted(r.items, key=lambda i: i.original_position)]) for r in recent if r.items]
    out = {}
    for version, bundle in bundles.items():
        t = time.perf_counter()
        requests = replays or _synthetic(bundle, count)
        done = 0
        for user, query, ids, scores in requests:
            try:
                fetched = await store.fetch(version, user, query, ids, None, bundle.history_cap, False)
                await anyio.to_thread.run_sync(score_sync, bundle, query, fetched, Listed(ids, scores))
                done += 1
            except Exception as e:  # noqa: BLE001 - Redis or the model in trouble: stop warming, start anyway
                log.warning("warm-up of %s stopped after %d requests: %s", version, done, e)
                break
        out[version] = {"requests": done, "from_served_log": float(bool(replays)),
                        "seconds": round(time.perf_counter() - t, 3)}
        log.info("warmed %s with %d %s requests in %.2f s", version, done,
                 "served" if replays else "synthetic", out[version]["seconds"])
    return out
