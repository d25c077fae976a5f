"""Ranking signals: what a ranking engineer gives a reranker besides content vectors.

The student's optional ``signals`` input holds, per candidate, a few numbers
computed from the request (its order and scores, the user's full history) and
from two offline product slices (popularity, co-purchase vectors). Groups can
be switched on one by one in the bundle's spec, which is how their worth is
measured (``hmpps ablate-student``). Columns, in this order:

    position       2  caller's rank as a fraction of the list; 1/log2(rank + 2)
    score          2  caller's score given (0/1); its z-score within the request
    popularity     2  log-count in the training interactions (offline, 0 for a new product);
                      the same minus the request's mean
    repeat         4  bought before (0/1); 1/(1 + purchases since); a near-duplicate (text cosine
                      >= NEAR_DUP_COSINE, another id) bought before (0/1); its 1/(1 + purchases since)
    whole_history  5  mean and max cosine to every other history item, text and stage-1 slices;
                      log1p(history length) / log1p(HISTORY_CAP)
    copurchase     3  co-purchase vectors (offline, from the training interactions): max and mean
                      cosine to the history's other items, cosine to the most recent one
    sequence       4  what is bought next: the transition score (offline "from" vector of a history
                      item . "to" vector of the candidate, a low-rank PPMI of consecutive purchases)
                      from the most recent other item, and recency-weighted over the last
                      SEQUENCE_WINDOW other items; recency-weighted text and stage-1 cosine to them
                      (weights RECENCY_DECAY ** purchases since, newest first)

"Other" history items exclude the candidate's own id, so the groups do not
leak into each other: only ``repeat`` knows whether the candidate was bought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.constants import HISTORY_CAP

GROUPS: dict[str, int] = {"position": 2, "score": 2, "popularity": 2, "repeat": 4, "whole_history": 5,
                          "copurchase": 3, "sequence": 4}
# what a new student reads by default: every group that has beaten its absence on held-out data
# (docs/results.md); "sequence" stays opt-in until it has
DEFAULT_GROUPS: tuple[str, ...] = ("position", "score", "popularity", "repeat", "whole_history", "copurchase")
NEAR_DUP_COSINE = 0.9
SEQUENCE_WINDOW = 5
RECENCY_DECAY = 0.5
COLUMNS: dict[str, tuple[str, ...]] = {
    "position": ("position_fraction", "position_discount"),
    "score": ("score_given", "score_z"),
    "popularity": ("popularity", "popularity_vs_list"),
    "repeat": ("bought_before", "bought_recency", "near_duplicate_bought", "near_duplicate_recency"),
    "whole_history": ("history_text_mean", "history_text_max", "history_sel_mean", "history_sel_max",
                      "history_length"),
    "copurchase": ("copurchase_max", "copurchase_mean", "copurchase_newest"),
    "sequence": ("transition_newest", "transition_recent", "recent_text", "recent_sel"),
}


def column_names(groups: Sequence[str]) -> list[str]:
    return [c for g in groups for c in COLUMNS[g]]


def check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    """Known group names, in the canonical order (so a spec's columns never depend on how they were listed)."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown signal group(s) {unknown}; known: {', '.join(GROUPS)}")
    return tuple(g for g in GROUPS if g in set(groups))


def signal_dim(groups: Sequence[str]) -> int:
    return sum(GROUPS[g] for g in groups)


@dataclass(frozen=True)
class Listing:
    """What the request says about its candidates besides their ids' features.

    Attributes:
        positions: (K,) each scored candidate's index in the caller's list.
        listed: length of the caller's list (unknown candidates included).
        scores: (K,) the caller's first-stage scores, NaN where not sent.
        candidate_ids: K ids, aligned with the candidate rows.
        history_ids: n ids, aligned with the history rows (oldest first).
    """

    positions: np.ndarray
    listed: int
    scores: np.ndarray
    candidate_ids: Sequence[str]
    history_ids: Sequence[str]

    @classmethod
    def in_order(cls, candidate_ids: Sequence[str], history_ids: Sequence[str],
                 scores: Sequence[float | None] | None = None) -> Listing:
        """Candidates in the caller's order, every one of them scored."""
        k = len(candidate_ids)
        sc = np.full(k, np.nan) if scores is None else np.array([np.nan if s is None else s for s in scores], float)
        return cls(np.arange(k), k, sc, list(candidate_ids), list(history_ids))


def _masked_stats(sims: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row mean and max of each (K, n) matrix in ``sims`` (m, K, n) over ``mask`` (K, n); 0 where a row
    has nothing. One pass for every matrix: a request's arrays are tiny, so numpy calls are the cost."""
    n = mask.sum(1)
    has = n > 0
    mean = np.where(has, (sims * mask).sum(2) / np.maximum(n, 1), 0.0)
    mx = np.where(has, np.where(mask, sims, -np.inf).max(2, initial=-np.inf), 0.0)
    return mean, mx


def _recent_weights(other: np.ndarray) -> np.ndarray:
    """(K, n) weights over each candidate's last SEQUENCE_WINDOW other history items: RECENCY_DECAY ** (its
    rank among them, 0 the newest), normalised to sum to 1; zeros for a candidate with none."""
    rank = np.cumsum(other[:, ::-1], axis=1)[:, ::-1] - 1  # 0 for the newest other item
    w = np.where(other & (rank < SEQUENCE_WINDOW), RECENCY_DECAY ** np.maximum(rank, 0), 0.0)
    return w / np.maximum(w.sum(1, keepdims=True), 1e-12)


def compute_signals(groups: Sequence[str], candidates: np.ndarray, history: np.ndarray, listing: Listing,
                    text: slice, sel: slice, pop: slice, cf: slice, seq: slice = slice(0, 0)) -> np.ndarray:
    """(K, signal_dim(groups)) float32 for K candidates against n history rows (oldest first).

    The slices say where the unit text, stage-1, popularity, co-purchase and transition parts sit in a
    product row.
    """
    k, n = candidates.shape[0], history.shape[0]
    if len(listing.candidate_ids) != k or len(listing.history_ids) != n or listing.positions.shape[0] != k:
        raise ValueError(f"listing has {len(listing.candidate_ids)} candidates and {len(listing.history_ids)} history "
                         f"ids for {k} candidate and {n} history rows")
    cols: list[np.ndarray] = []
    same = np.zeros((k, n), bool)  # candidate i is history item j
    if n and {"repeat", "whole_history", "copurchase", "sequence"} & set(groups):
        where: dict[str, list[int]] = {}
        for j, h in enumerate(listing.history_ids):
            where.setdefault(h, []).append(j)
        for i, c in enumerate(listing.candidate_ids):
            same[i, where.get(c, [])] = True
    other = ~same
    since = (n - 1 - np.arange(n)).astype(np.float64)  # purchases since each history item (0: the newest)
    # the similarity matrices the groups need, stacked so that their masked stats are one pass
    half = (seq.stop - seq.start) // 2
    to_, from_ = slice(seq.start + half, seq.stop), slice(seq.start, seq.start + half)
    # (candidate slice, history slice): the transition score reads the candidate's "to" half against each
    # history item's "from" half; the rest compare like with like
    slices = {"text": (text, text), "sel": (sel, sel), "cf": (cf, cf), "seq": (to_, from_)}
    uses = {"repeat": ("text",), "whole_history": ("text", "sel"), "copurchase": ("cf",),
            "sequence": ("seq", "text", "sel")}
    wanted = list(dict.fromkeys(name for g in groups for name in uses.get(g, ())))
    at = {name: i for i, name in enumerate(wanted)}
    sims = np.stack([candidates[:, slices[w][0]] @ history[:, slices[w][1]].T for w in wanted]) if wanted and n else \
        np.zeros((len(wanted), k, 0), np.float32)
    means, maxes = _masked_stats(sims, other) if wanted else (np.zeros((0, k)), np.zeros((0, k)))
    for g in groups:
        if g == "position":
            pos = listing.positions.astype(np.float64)
            cols += [pos / max(1, listing.listed - 1), 1.0 / np.log2(pos + 2.0)]
        elif g == "score":
            s = np.asarray(listing.scores, np.float64)
            given = ~np.isnan(s)
            z = np.zeros(k)
            if given.sum() >= 2 and s[given].std() > 1e-9:
                z[given] = (s[given] - s[given].mean()) / s[given].std()
            cols += [given.astype(np.float64), z]
        elif g == "popularity":
            p = candidates[:, pop].astype(np.float64).reshape(k)
            cols += [p, p - p.mean()]
        elif g == "repeat":
            newest = np.where(same, since, np.inf).min(1, initial=np.inf)
            near = (sims[at["text"]] >= NEAR_DUP_COSINE) & other
            near_newest = np.where(near, since, np.inf).min(1, initial=np.inf)
            cols += [np.isfinite(newest).astype(np.float64), np.where(np.isfinite(newest), 1.0 / (1.0 + newest), 0.0),
                     np.isfinite(near_newest).astype(np.float64),
                     np.where(np.isfinite(near_newest), 1.0 / (1.0 + near_newest), 0.0)]
        elif g == "whole_history":
            for part in ("text", "sel"):
                cols += [means[at[part]], maxes[at[part]]]
            cols.append(np.full(k, np.log1p(n) / np.log1p(HISTORY_CAP)))
        elif g == "copurchase":
            i = at["cf"]
            # the most recent history item that is not the candidate itself
            last = np.where(other, np.arange(n), -1).max(1, initial=-1)
            recent = np.where(last >= 0, sims[i][np.arange(k), np.maximum(last, 0)] if n else 0.0, 0.0)
            cols += [maxes[i], means[i], recent]
        elif g == "sequence":
            last = np.where(other, np.arange(n), -1).max(1, initial=-1)
            t = sims[at["seq"]]
            newest = np.where(last >= 0, t[np.arange(k), np.maximum(last, 0)] if n else 0.0, 0.0)
            w = _recent_weights(other) if n else np.zeros((k, 0))
            cols += [newest, (w * t).sum(1), (w * sims[at["text"]]).sum(1), (w * sims[at["sel"]]).sum(1)]
        else:
            raise ValueError(f"unknown signal group {g!r}")
    if not cols:
        return np.zeros((k, 0), np.float32)
    return np.stack(cols, axis=1).astype(np.float32)
