"""``hmpps ab-report``: per-arm query-CTR and efficient-click rate from the feedback stream.

A query is one rerank request (its impression). Query-CTR is the share of
queries with at least one click; the efficient-click rate the share with a
click whose dwell exceeded 5 s (the paper's online test, Sec. 5.6). Users,
not queries, are the randomisation unit, so variances use the delta method
on per-user sums. Sample-ratio mismatch is a chi-square test of users per arm
against the configured weights.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from contract import keys
from contract.constants import EFFICIENT_DWELL_S
from contract.reports import markdown_table
from contract.streams import entry_field, iter_stream


def read_events(client: Any, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """The feedback stream's events, optionally those written between two unix times."""
    return [json.loads(entry_field(f, "e")) for _, f in iter_stream(client, keys.FEEDBACK_STREAM, since, until)]


def _normal_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): the sample-ratio-mismatch p-value, exact for integer df.

    The regularized upper incomplete gamma Q(df/2, x/2) in closed form (even df: a Poisson tail; odd
    df: erfc plus a finite sum), so the report needs no scipy.
    """
    if df < 1:
        raise ValueError(f"df={df}: a chi-square test needs at least 1 degree of freedom")
    if x <= 0:
        return 1.0
    y = x / 2.0
    if df % 2 == 0:  # Q(k, y) = e^-y * sum_{i<k} y^i / i!
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= y / i
            total += term
        return min(1.0, math.exp(-y) * total)
    # Q(m + 1/2, y) = erfc(sqrt y) + e^-y * sum_{i=1..m} y^(i - 1/2) / Gamma(i + 1/2)
    total, term = math.erfc(math.sqrt(y)), math.sqrt(y) / math.gamma(1.5)
    for i in range(1, (df - 1) // 2 + 1):
        total += math.exp(-y) * term
        term *= y / (i + 0.5)
    return min(1.0, total)


def _ratio_stats(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Ratio of sums and its delta-method variance over independent users."""
    n = len(den)
    if n == 0 or den.sum() == 0:
        return float("nan"), float("nan")
    r = num.sum() / den.sum()
    if n < 2:
        return float(r), float("nan")
    mn, md = num.mean(), den.mean()
    var = (np.var(num, ddof=1) - 2 * r * np.cov(num, den, ddof=1)[0, 1] + r * r * np.var(den, ddof=1)) / (n * md * md)
    return float(r), float(max(var, 0.0)) if mn >= 0 else float("nan")


def ab_report(events: list[dict[str, Any]], expected: dict[str, float] | None = None,
              control: str | None = None) -> dict[str, Any]:
    queries: dict[str, dict[str, Any]] = {}
    for e in events:
        q = queries.setdefault(e["request_id"], {"arm": e["arm"], "user": e["user_id"], "imp": False,
                                                 "click": False, "efficient": False})
        if e["type"] == "impression":
            q["imp"] = True
        elif e["type"] == "click":
            q["click"] = True
        elif e["type"] == "dwell" and float(e.get("dwell_s") or 0) > EFFICIENT_DWELL_S:
            q["click"] = q["efficient"] = True
    per_user: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for q in queries.values():
        if not q["imp"]:
            continue  # clicks without an impression are not queries we served
        u = per_user[q["arm"]][q["user"]]
        u[0] += 1
        u[1] += int(q["click"])
        u[2] += int(q["efficient"])
    arms = sorted(per_user)
    if not arms:
        return {"arms": {}, "srm": None, "control": None, "queries": 0}
    control = control if control in per_user else ("control" if "control" in per_user else arms[0])
    out: dict[str, Any] = {}
    for arm in arms:
        m = np.array(list(per_user[arm].values()), dtype=np.float64)
        ctr, ctr_var = _ratio_stats(m[:, 1], m[:, 0])
        eff, eff_var = _ratio_stats(m[:, 2], m[:, 0])
        out[arm] = {"users": len(m), "queries": int(m[:, 0].sum()), "clicked_queries": int(m[:, 1].sum()),
                    "efficient_queries": int(m[:, 2].sum()), "query_ctr": ctr, "efficient_click_rate": eff,
                    "_var": (ctr_var, eff_var)}
    base = out[control]
    for arm, s in out.items():
        for metric, vi in (("query_ctr", 0), ("efficient_click_rate", 1)):
            if arm == control:
                s[f"{metric}_lift"], s[f"{metric}_p"], s[f"{metric}_diff"], s[f"{metric}_ci95"] = None, None, None, None
                continue
            diff = s[metric] - base[metric]
            se = math.sqrt(s["_var"][vi] + base["_var"][vi]) if not any(
                math.isnan(v) for v in (s["_var"][vi], base["_var"][vi])) else float("nan")
            s[f"{metric}_lift"] = diff / base[metric] if base[metric] else None
            ok = bool(se) and not math.isnan(se) and se > 0
            s[f"{metric}_p"] = _normal_p(diff / se) if ok else None
            # the absolute difference to control, normal interval over users (delta method)
            s[f"{metric}_diff"] = diff
            s[f"{metric}_ci95"] = [diff - 1.96 * se, diff + 1.96 * se] if ok else None
    for s in out.values():
        s.pop("_var")
    users = {a: out[a]["users"] for a in arms}
    shares = expected or {a: 1.0 / len(arms) for a in arms}
    total = sum(users.values())
    tot_share = sum(shares.get(a, 0.0) for a in arms)
    srm = None
    if len(arms) > 1 and tot_share > 0:
        chi = sum((users[a] - total * shares.get(a, 0) / tot_share) ** 2 / max(total * shares.get(a, 0) / tot_share, 1e-9)
                  for a in arms)
        srm = {"chi2": chi, "df": len(arms) - 1, "p": chi2_sf(chi, len(arms) - 1), "users": users,
               "expected_shares": {a: shares.get(a, 0) / tot_share for a in arms}}
    return {"arms": out, "control": control, "srm": srm, "queries": sum(s["queries"] for s in out.values())}


def report_markdown(rep: dict[str, Any]) -> str:
    def f(x: Any, pct: bool = False) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        return f"{x:+.2%}" if pct else (f"{x:.4f}" if isinstance(x, float) else str(x))

    def ci(x: Any) -> str:
        return "n/a" if not x else f"[{x[0]:+.4f}, {x[1]:+.4f}]"

    lines = [f"# A/B report (control: `{rep['control']}`)", "", markdown_table(
        ["arm", "users", "queries", "query-CTR", "lift", "95% CI (diff)", "p", "efficient-click rate", "lift",
         "95% CI (diff)", "p"],
        [[arm, s["users"], s["queries"], f(s["query_ctr"]), f(s["query_ctr_lift"], True), ci(s["query_ctr_ci95"]),
          f(s["query_ctr_p"]), f(s["efficient_click_rate"]), f(s["efficient_click_rate_lift"], True),
          ci(s["efficient_click_rate_ci95"]), f(s["efficient_click_rate_p"])]
         for arm, s in rep["arms"].items()])]
    srm = rep["srm"]
    if srm:
        flag = " **sample-ratio mismatch: do not trust the lifts**" if srm["p"] < 0.001 else ""
        lines += ["", f"SRM check: chi2 = {srm['chi2']:.3f}, df = {srm['df']}, p = {srm['p']:.4g}{flag}"]
    return "\n".join(lines) + "\n"
