"""``hmpps explore-cost``: what an exploration setting costs in offline NDCG@4, so a team can pick one.

For each held-out test query the student scores its candidates (as the
service would, ``distill.tables.held_out_lists``), and the exploring arm's
Plackett-Luce policy at each temperature places the purchased product at
position k with the exact marginal probability (``contract.exploration``).
The expected NDCG@4 under the policy is therefore exact, not sampled:
``sum_k<4 P(target at k) / log2(k + 2)``. The cost is its paired difference
to the deterministic student over the same queries.

The smallest display probability a setting gives the student's top item at
the top, and the median probability of the items shown, say how much
randomness (and so how narrow OPE's intervals) the setting buys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contract.exploration import Exploration, log_odds, marginals
from contract.reports import markdown_table

DISCOUNT = np.array([1 / math.log2(k + 2) for k in range(4)])


def expected_ndcg(logits: np.ndarray, target: int | None, policy: Exploration | None) -> tuple[float, float]:
    """(expected NDCG@4 of one list under the policy, the mean display probability of what it shows)."""
    n = len(logits)
    ranked = sorted(range(n), key=lambda i: (-logits[i], i))
    if policy is None:
        rank = ranked.index(target) if target is not None else None
        return (float(DISCOUNT[rank]) if rank is not None and rank < 4 else 0.0), 1.0
    top = ranked[: policy.depth]
    marg = marginals(logits[top], policy.temperature) if len(top) > 1 else np.ones((1, 1))
    shown = float((marg * marg).sum() / len(top))  # E[p(shown item at its slot)] over the redrawn slots
    if target is None:
        return 0.0, shown
    if target not in top:
        rank = ranked.index(target)
        return (float(DISCOUNT[rank]) if rank < 4 else 0.0), shown
    row = marg[top.index(target)]
    k = min(4, len(row))
    return float(row[:k] @ DISCOUNT[:k]), shown


def exploration_cost(bundle: Path, data: Path, first_stage: Path, temperatures: Sequence[float], depth: int,
                     resamples: int = 10_000, split: str = "test") -> dict[str, Any]:
    from contract.bundle import read_manifest
    from contract.spec import yes_probability
    from distill.tables import BundleTables, held_out_lists
    from service.core.bundle import OnnxScorer
    from training.metrics import paired_values_bootstrap

    tables = BundleTables(bundle)
    tests = held_out_lists(tables, data, first_stage, split)
    logits = log_odds(yes_probability(OnnxScorer(bundle / read_manifest(bundle).models["student"]).logits(tests.inputs)))
    lists, at = [], 0
    for pids, target in zip(tests.lists, tests.targets, strict=True):
        lists.append((logits[at:at + len(pids)], pids.index(target) if target in pids else None))
        at += len(pids)
    base = np.array([expected_ndcg(lg, t, None)[0] for lg, t in lists])
    rows = [{"temperature": 0.0, "NDCG@4": float(base.mean()), "cost": 0.0, "cost_ci95": [0.0, 0.0],
             "relative_cost": 0.0, "mean_display_probability": 1.0}]
    for temp in tqdm(temperatures, desc="exploration settings", unit="setting"):
        policy = Exploration(float(temp), depth)
        got = [expected_ndcg(lg, t, policy) for lg, t in lists]
        v = np.array([g[0] for g in got])
        pb = paired_values_bootstrap(base, v, resamples=resamples)
        rows.append({"temperature": float(temp), "NDCG@4": float(v.mean()), "cost": pb["diff"], "cost_ci95": pb["ci95"],
                     "relative_cost": pb["diff"] / float(base.mean()) if base.mean() else float("nan"),
                     "mean_display_probability": float(np.mean([g[1] for g in got]))})
    return {"bundle": str(bundle), "queries": len(lists), "split": split, "depth": depth, "settings": rows}


def report_markdown(rep: dict[str, Any]) -> str:
    rows = [[("deterministic student" if r["temperature"] == 0 else f"T = {r['temperature']:g}"),
             f"{r['NDCG@4']:.4f}", f"{r['cost']:+.4f}", f"[{r['cost_ci95'][0]:+.4f}, {r['cost_ci95'][1]:+.4f}]",
             f"{r['relative_cost']:.2%}", f"{r['mean_display_probability']:.3f}"] for r in rep["settings"]]
    return "\n".join([
        "# What exploration costs offline", "",
        f"{rep['queries']} {rep['split']} queries; Plackett-Luce over the student's top {rep['depth']} at each "
        f"temperature; the expected NDCG@4 is exact (display marginals), the cost is the deterministic student "
        "minus the setting, paired over queries (bootstrap 95% interval).", "",
        markdown_table(["setting", "expected NDCG@4", "cost", "95% CI", "relative cost",
                        "mean display probability of a shown item"], rows), ""])
