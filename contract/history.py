"""Two-step, query-aware history selection (HMPPS Sec. 4.3, Eq. 6).

Given stage-1 embeddings f of the user's purchased products, the query and a
candidate, keep the 2·K_s2 history items most cosine-similar to the query,
then, among those, the K_s2 most similar to the candidate. The result keeps
chronological order (oldest first), as the prompt lists history in time order.

This one function serves training (stage 2, ablations, distillation) and the
online service, so the student sees at serving time exactly the history it
was trained on.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def select_history(history: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices into ``history`` selected for each candidate.

    Args:
        history: (n, d) embeddings of the user's purchases, oldest first.
        query: (d,) query embedding.
        candidates: (K, d) candidate embeddings.
        k: K_s2, the number of history items kept per candidate.

    Returns:
        (K, min(k, n)) int array; each row is sorted ascending (chronological).
        Ties are broken towards the more recent purchase.
    """
    history = np.asarray(history)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2:
        raise ValueError(f"candidates must be (K, d), got shape {candidates.shape}")
    n = 0 if history.size == 0 else history.shape[0]
    n_keep = min(k, n)
    if n_keep <= 0:
        return np.zeros((candidates.shape[0], 0), dtype=np.int64)
    h = _unit(history)
    q_sim = h @ _unit(query)
    # stable sort on (-similarity, -recency): most similar first, recent first on ties
    order = np.lexsort((-np.arange(n), -q_sim))
    pool = order[: min(2 * k, n)]
    c_sim = _unit(candidates) @ h[pool].T  # (K, |pool|)
    recency = np.broadcast_to(-pool, c_sim.shape)
    picked = np.lexsort((recency, -c_sim), axis=1)[:, :n_keep]
    return np.sort(pool[picked], axis=1)


def select_latest(n: int, k: int) -> np.ndarray:
    """The k most recent purchases, chronological."""
    return np.arange(max(0, n - k), n)


def select_random(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k random purchases, chronological (stage 1 of HMPPS, K_s1)."""
    if n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))
