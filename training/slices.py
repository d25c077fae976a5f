"""Quality by slice: where a reranker wins and where a model-free rule would serve better.

Every quality report (the pipeline's and ``hmpps ablate-student``'s) breaks its test queries down by
- the user's history length before the query: 0, 1-2, 3-9, 10 or more purchases;
- the purchased product's popularity in the training purchases: head (the most bought products that
  make up the first half of all purchases), torso (the next 30%), tail (the last 20%), and cold
  (never bought in training: its features are content only, as for a product the offline run never saw);

and gives, per slice, the models' NDCG@4 and a paired interval of the model against the best rule
*in that slice*. A slice where that interval is below zero is one where the service could serve the
rule instead; the report flags it (measure that switch before shipping it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.reports import markdown_table
from training.dataset import Dataset
from training.metrics import paired_values_bootstrap

HISTORY_BUCKETS = ((0, 0, "0"), (1, 2, "1-2"), (3, 9, "3-9"), (10, None, "10+"))
POPULARITY = ("head", "torso", "tail", "cold")
HEAD_SHARE, TORSO_SHARE = 0.5, 0.8  # cumulative share of training purchases
MIN_QUERIES = 30  # a smaller slice gets its numbers but no verdict


def history_bucket(n: int) -> str:
    for lo, hi, name in HISTORY_BUCKETS:
        if n >= lo and (hi is None or n <= hi):
            return name
    raise ValueError(n)


def popularity_classes(ds: Dataset) -> dict[str, str]:
    """Each product's class by training purchases: head, torso, tail (cumulative shares), cold (none)."""
    counts = Counter(r["product_id"] for r in ds.interactions if r["split"] == "train")
    total = sum(counts.values())
    out = dict.fromkeys(ds.products, "cold")
    seen = 0
    for pid, c in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        share = seen / total  # the share of purchases before this product: the most bought one is head
        out[pid] = "head" if share < HEAD_SHARE else "torso" if share < TORSO_SHARE else "tail"
        seen += c
    return out


def row_slices(ds: Dataset, rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Each row's slice on each dimension."""
    pop = popularity_classes(ds)
    return {"history length": [history_bucket(len(ds.history(r))) for r in rows],
            "target popularity": [pop.get(r["product_id"], "cold") for r in rows]}


def slice_report(ds: Dataset, rows: Sequence[dict[str, Any]], values: dict[str, np.ndarray],
                 models: Sequence[str], rules: Sequence[str], first_stage: str) -> dict[str, Any]:
    """Per dimension and slice: query count, every entry's mean NDCG@4 (``values``: per-query NDCG@4 by
    name, aligned with ``rows``), the best rule there, and each model against it (paired 95% interval)."""
    out: dict[str, Any] = {}
    for dim, labels in row_slices(ds, rows).items():
        lab = np.array(labels)
        order = [b[2] for b in HISTORY_BUCKETS] if dim == "history length" else list(POPULARITY)
        out[dim] = {}
        for name in order:
            m = lab == name
            if not m.any():
                continue
            means = {k: float(v[m].mean()) for k, v in values.items()}
            best = max(rules, key=lambda r: means[r])
            entry: dict[str, Any] = {"queries": int(m.sum()), "NDCG@4": means, "best_rule": best, "versus_best_rule": {}}
            for model in models:
                d = paired_values_bootstrap(values[model][m], values[best][m], resamples=2000)
                d["loses"] = bool(m.sum() >= MIN_QUERIES and d["ci95"][1] < 0)
                entry["versus_best_rule"][model] = d
            entry["versus_first_stage"] = {model: paired_values_bootstrap(values[model][m], values[first_stage][m],
                                                                          resamples=2000) for model in models}
            out[dim][name] = entry
    return out


def slice_table(report: dict[str, Any], first_stage: str) -> str:
    """One Markdown table per report: slices as rows, the first stage, best rule and models as columns."""
    def ci(d: dict[str, Any]) -> str:
        return f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" + (" **loses**" if d.get("loses") else "")

    models = sorted({m for dim in report.values() for e in dim.values() for m in e["versus_best_rule"]})
    rows = []
    for dim, slices in report.items():
        for name, e in slices.items():
            rows.append([f"{dim}: {name}", e["queries"], f"{e['NDCG@4'][first_stage]:.4f}",
                         f"{e['best_rule']} {e['NDCG@4'][e['best_rule']]:.4f}",
                         *(f"{e['NDCG@4'][m]:.4f}" for m in models),
                         *(ci(e["versus_first_stage"][m]) for m in models),
                         *(ci(e["versus_best_rule"][m]) for m in models)])
    head = ["slice", "queries", f"{first_stage} NDCG@4", "best rule there"] + [f"{m} NDCG@4" for m in models] + \
        [f"{m} − {first_stage} [95% CI]" for m in models] + [f"{m} − best rule [95% CI]" for m in models]
    losing = [f"{dim}: {name} ({m})" for dim, s in report.items() for name, e in s.items()
              for m, d in e["versus_best_rule"].items() if d.get("loses")]
    note = (f"History length: the user's purchases before the query. Target popularity: head, torso and tail "
            f"split the training purchases at {HEAD_SHARE:.0%} and {TORSO_SHARE:.0%} of the total, most bought "
            f"first; cold products were never bought in training. Intervals: paired bootstraps (2,000 resamples); "
            f"a slice of at least {MIN_QUERIES} queries whose interval against its best rule is below zero "
            "is marked **loses**: there the rule would serve better. ")
    note += ("Slices where a model loses: " + ", ".join(losing) + "." if losing else "No slice where a model loses.")
    return markdown_table(head, rows) + "\n\n" + note
