"""The evaluation metrics, one module for every stage.

HMPPS protocol (paper Sec. 5.1, App. B.2): each test query has one target
product and a ranked top-K_p list (K_p = 10). MRR@8, NDCG@4, Recall@4 and
Recall@1 are averaged over **all** test queries; a query whose target is not
in the list scores 0 on every metric, for every model. With a single relevant
item the ideal DCG is 1, so NDCG@k = 1/log2(rank + 1) for rank <= k.

Ties: a list metric scores the list as given. Rerankers produce their list
with :func:`rerank`, a stable sort, so equal scores keep the first stage's
order and a constant scorer reproduces the first stage exactly.

MAPS protocol (MAPS paper): the target is scored against 99 sampled negatives;
HR@k and NDCG@k for k in {5, 10, 20}. Ties count against the target
(rank = 1 + #negatives scoring >= the target), so a constant scorer gets no
credit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PAPER_KEYS = ("MRR@8", "NDCG@4", "Recall@4", "Recall@1")
MAPS_KS = (5, 10, 20)


def target_rank(ranked: Sequence[str], target: str) -> int | None:
    """1-based rank of the target in a ranked list, or None when it is absent."""
    for i, pid in enumerate(ranked):
        if pid == target:
            return i + 1
    return None


def query_metrics(rank: int | None) -> dict[str, float]:
    if rank is None:
        return {k: 0.0 for k in PAPER_KEYS}
    return {
        "MRR@8": 1.0 / rank if rank <= 8 else 0.0,
        "NDCG@4": 1.0 / math.log2(rank + 1) if rank <= 4 else 0.0,
        "Recall@4": 1.0 if rank <= 4 else 0.0,
        "Recall@1": 1.0 if rank == 1 else 0.0,
    }


def paper_metrics(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str]) -> dict[str, Any]:
    """Mean MRR@8, NDCG@4, Recall@4, Recall@1 over all queries, plus ``n``."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    sums = dict.fromkeys(PAPER_KEYS, 0.0)
    for ranked, target in zip(ranked_lists, targets, strict=True):
        for k, v in query_metrics(target_rank(ranked, target)).items():
            sums[k] += v
    n = len(targets)
    out: dict[str, Any] = {k: (sums[k] / n if n else 0.0) for k in PAPER_KEYS}
    out["n"] = n
    return out


def rerank(product_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Order by descending score; ties keep the incoming order (stable)."""
    if len(product_ids) != len(scores):
        raise ValueError(f"{len(product_ids)} products but {len(scores)} scores")
    order = sorted(range(len(product_ids)), key=lambda i: -float(scores[i]))
    return [product_ids[i] for i in order]


def sampled_metrics(pos_scores: np.ndarray, neg_scores: np.ndarray, ks: Sequence[int] = MAPS_KS) -> dict[str, Any]:
    """HR@k and NDCG@k with one positive against sampled negatives per query.

    ``pos_scores`` has shape (n,), ``neg_scores`` shape (n, n_neg).
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if neg.ndim != 2 or pos.shape[0] != neg.shape[0]:
        raise ValueError(f"expected pos (n,) and neg (n, m); got {pos.shape} and {neg.shape}")
    ranks = 1 + (neg >= pos[:, None]).sum(axis=1)
    out: dict[str, Any] = {}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean()) if len(ranks) else 0.0
    out["n"] = int(len(ranks))
    return out


def paired_bootstrap(reranked: Sequence[Sequence[str]], base: Sequence[Sequence[str]], targets: Sequence[str],
                     key: str = "NDCG@4", resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of the per-query difference reranked - base on one metric, over the same queries.

    Returns the mean difference, its 95% percentile interval, and on how many queries the reranked list
    scores higher or lower. One run's test set says how sure a gain is; the interval is that statement.
    """
    a = np.array([query_metrics(target_rank(r, t))[key] for r, t in zip(reranked, targets, strict=True)])
    b = np.array([query_metrics(target_rank(r, t))[key] for r, t in zip(base, targets, strict=True)])
    return paired_values_bootstrap(a, b, key, resamples, seed)


def per_query(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str], key: str = "NDCG@4") -> np.ndarray:
    return np.array([query_metrics(target_rank(r, t))[key] for r, t in zip(ranked_lists, targets, strict=True)])


def chance_per_query(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str], key: str = "NDCG@4") -> np.ndarray:
    """Each query's expected ``key`` when its list is shuffled at random (0 where the target is absent)."""
    return np.array([_mean_over_ranks(len(r))[key] if t in r else 0.0
                     for r, t in zip(ranked_lists, targets, strict=True)])


def paired_values_bootstrap(a: np.ndarray, b: np.ndarray, key: str = "NDCG@4", resamples: int = 10_000,
                            seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of mean(a - b) over per-query values of the same queries."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    if not len(diff):
        return {"metric": key, "diff": float("nan"), "ci95": [float("nan")] * 2, "wins": 0, "losses": 0, "n": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"metric": key, "diff": float(diff.mean()), "ci95": [float(lo), float(hi)],
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "n": len(diff), "resamples": resamples}


def random_order(ranked_lists: Sequence[Sequence[str]], targets: Sequence[str], observed: float | None = None,
                 key: str = "NDCG@4", rounds: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """What shuffling each list at random would score: the chance level a reranker has to beat.

    ``expected`` holds every paper metric's exact expectation (the target equally likely at each rank of
    its list; a query whose target is absent scores 0, as always). ``rounds`` seeded shuffles of all
    lists give the spread of the mean ``key``: its 95th percentile and, for an ``observed`` mean, the
    share of shuffles reaching it (a one-sided permutation p-value). A first stage whose order carries
    little signal sits near chance, so a gain over it says little unless it also clears this.
    """
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    sizes = np.array([len(r) if t in r else 0 for r, t in zip(ranked_lists, targets, strict=True)])
    n = len(sizes)
    expected: dict[str, Any] = dict.fromkeys(PAPER_KEYS, 0.0)
    for size in sizes[sizes > 0]:
        for k, v in _mean_over_ranks(int(size)).items():
            expected[k] += v / n
    expected["n"] = n
    out: dict[str, Any] = {"metric": key, "expected": expected, "rounds": rounds}
    if not n or rounds <= 0:  # rounds=0: the expectation alone
        return out | {"p95": float("nan"), "p_value": float("nan") if observed is not None else None}
    rng = np.random.default_rng(seed)
    table = np.array([0.0] + [query_metrics(r)[key] for r in range(1, int(sizes.max()) + 1)])
    ranks = np.floor(rng.random((rounds, n)) * sizes).astype(int) + 1  # uniform in 1..size per query
    means = table[np.where(sizes > 0, ranks, 0)].mean(axis=1)  # index 0 scores 0: target not in the list
    out["p95"] = float(np.percentile(means, 95))
    out["p_value"] = float((means >= observed - 1e-12).mean()) if observed is not None else None
    return out


def _mean_over_ranks(size: int) -> dict[str, float]:
    per_rank = [query_metrics(r) for r in range(1, size + 1)]
    return {k: sum(m[k] for m in per_rank) / size for k in PAPER_KEYS}


def pairwise_auc(scored: Sequence[dict[str, Any]], key: str) -> float:
    """Within-query AUC: the share of (target, other candidate) pairs of a query where the target scores
    higher, ties counting half, pooled over queries. It says how well a scorer separates the target from
    the rest of its list with no rank cut-off, so it shows learning that NDCG@4 can hide."""
    wins = pairs = 0.0
    for row in scored:
        cands = row["candidates"]
        pos = [c[key] for c in cands if c["label"]]
        neg = [c[key] for c in cands if not c["label"]]
        for p in pos:
            wins += sum(1.0 if p > n else 0.5 if p == n else 0.0 for n in neg)
            pairs += len(neg)
    return wins / pairs if pairs else float("nan")


def relative_gain(new: dict[str, Any], base: dict[str, Any], key: str = "NDCG@4") -> float:
    """Relative improvement of ``new`` over ``base`` on one metric (0.1 = +10%)."""
    return new[key] / base[key] - 1.0 if base[key] > 0 else float("nan")


def kept_gain(student: dict[str, Any], teacher: dict[str, Any], base: dict[str, Any], key: str = "NDCG@4") -> float:
    """Share of the teacher's gain over the first stage that the student keeps."""
    gain = teacher[key] - base[key]
    return (student[key] - base[key]) / gain if gain != 0 else float("nan")
