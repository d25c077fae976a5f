"""Checks of a running stack, shared by the native stack test and ``make compose-check``.

Both drive the same traffic (reranks from the bundle's real users and queries,
with feedback and purchases) and ask the same question of Prometheus: does every
PromQL expression of the Grafana dashboard return data?
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from loadtest.mix import RequestMix

DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "hmpps-rerank.json"


def dashboard_exprs(dashboard: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dash = json.loads(dashboard.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


class Prometheus:
    def __init__(self, base: str, timeout_s: float = 5.0):
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[dict[str, Any]]:
        # Grafana's $__rate_interval is not PromQL; 30 s covers several 5 s scrapes
        r = httpx.get(self.base + "/api/v1/query", params={"query": expr.replace("$__rate_interval", "30s")},
                      timeout=self.timeout_s)
        if r.status_code != 200:
            raise AssertionError(f"{expr}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()["data"]["result"]  # type: ignore[no-any-return]

    def targets(self, job: str) -> list[dict[str, Any]]:
        active = httpx.get(self.base + "/api/v1/targets", timeout=self.timeout_s).json()["data"]["activeTargets"]
        return [t for t in active if t["labels"].get("job") == job]

    def unhealthy_rules(self) -> list[str]:
        groups = httpx.get(self.base + "/api/v1/rules", timeout=self.timeout_s).json()["data"]["groups"]
        return [f"{r['name']}: {r.get('lastError', r['health'])}" for g in groups for r in g["rules"] if r["health"] != "ok"]

    def dashboard_gaps(self, dashboard: Path = DASHBOARD) -> list[str]:
        """Every dashboard expression that returns no finite value, as 'title: expr -> values'."""
        empty = []
        for title, expr in dashboard_exprs(dashboard):
            values = [float(s["value"][1]) for s in self.query(expr)]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{title}: {expr} -> {values}")
        return empty


def traffic(base: str, bundle: Path, seconds: float, seed: int = 3, purchases: bool = True) -> dict[str, int]:
    """Reranks from the bundle's real users and queries (a fifth are unseen tail queries), with
    impressions, clicks and dwell on a third of them and a purchase on a quarter. Raises on any non-200."""
    mix = RequestMix(bundle, 10, seed=seed, tail_share=0.2)
    counts = {"rerank": 0, "feedback": 0, "events": 0}
    run = uuid.uuid4().hex[:8]  # event ids unique per run: a repeated run appends, not deduplicates
    end = time.time() + seconds
    with httpx.Client(base_url=base, timeout=5) as c:
        i = 0
        while time.time() < end:
            body = mix.body()
            r = c.post("/rerank", json=body)
            if r.status_code != 200:
                raise AssertionError(f"/rerank answered {r.status_code}: {r.text[:300]}")
            resp = r.json()
            counts["rerank"] += 1
            ev = [{"type": "impression", "request_id": resp["request_id"], "user_id": body["user_id"], "arm": resp["arm"]}]
            if i % 3 == 0:
                top = resp["results"][0]["product_id"]
                ev += [{"type": "click", "request_id": resp["request_id"], "user_id": body["user_id"], "arm": resp["arm"],
                        "product_id": top},
                       {"type": "dwell", "request_id": resp["request_id"], "user_id": body["user_id"], "arm": resp["arm"],
                        "product_id": top, "dwell_s": 3.0 + (i % 5)}]
            fb = c.post("/feedback", json={"events": ev})
            if fb.status_code != 200:
                raise AssertionError(f"/feedback answered {fb.status_code}: {fb.text[:300]}")
            counts["feedback"] += len(ev)
            if purchases and i % 4 == 0:  # the user buys what was shown first: the freshness panel's events
                bought = {"event_id": f"stack-{run}-{i}", "user_id": body["user_id"], "type": "purchase",
                          "product_id": resp["results"][0]["product_id"], "timestamp": time.time()}
                got = c.post("/events", json={"events": [bought]})
                if got.status_code != 200 or got.json()["history_appends"] != 1:
                    raise AssertionError(f"/events answered {got.status_code}: {got.text[:300]}")
                counts["events"] += 1
            i += 1
            time.sleep(0.01)
    return counts
