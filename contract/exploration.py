"""Exploration: the student's ranking randomised within a stated budget, with exact display probabilities.

Off-policy evaluation needs, for every logged item, the probability that the
logging policy showed it at the position it was shown: a deterministic ranker
gives 1 or 0 and nothing to reweight. The exploration policy is Plackett-Luce
over the student's log-odds at a temperature: the top slot is drawn with
probability ``softmax(logit / T)``, the next from what is left, and so on.
Only the student's top ``depth`` candidates are drawn this way (into the first
``depth`` slots); the rest keep the student's order. ``T`` near 0 is the
deterministic student; large ``T`` a uniform shuffle of the top ``depth``.

Each shown item's marginal probability of being at its position, summed over
every ranking that puts it there, is computed exactly by dynamic programming
over the sets of items already placed (2^depth sets, so ``depth`` is at most
``MAX_DEPTH``). The whole ranking's probability (the product of the sequential
draws) is logged too: the standard slate IPS estimator needs it.

Draws are seeded from the request id, so a retried request gets the same list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

MAX_DEPTH = 10


@dataclass(frozen=True)
class Exploration:
    """Plackett-Luce sampling from the student's log-odds at ``temperature``, over the top ``depth``."""

    temperature: float
    depth: int = MAX_DEPTH

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 100):
            raise ValueError(f"temperature={self.temperature!r}: must be a number in (0, 100]")
        if not (isinstance(self.depth, int) and 2 <= self.depth <= MAX_DEPTH):
            raise ValueError(f"depth={self.depth!r}: must be an integer in [2, {MAX_DEPTH}]")

    @classmethod
    def from_dict(cls, d: Any) -> Exploration:
        if not isinstance(d, dict):
            raise ValueError("must be a mapping with 'temperature' (and optionally 'depth')")
        unknown = sorted(set(d) - {"policy", "temperature", "depth"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        if d.get("policy", "plackett-luce") != "plackett-luce":
            raise ValueError(f"policy {d.get('policy')!r}: only 'plackett-luce' is implemented")
        if "temperature" not in d:
            raise ValueError("needs a 'temperature'")
        return cls(d["temperature"], d.get("depth", MAX_DEPTH))

    def describe(self) -> str:
        return f"plackett-luce(T={self.temperature:g}, depth={self.depth})"


@dataclass(frozen=True)
class Draw:
    order: list[int]  # indices into the scored items, in display order
    propensity: list[float]  # each displayed item's marginal probability of being at that position
    steps: list[float]  # each position's draw given the ones above it (1 past ``depth``)

    def slate(self, shown: int | None = None) -> float:
        """The probability of the first ``shown`` positions (all by default) being exactly these items."""
        return float(np.prod(self.steps[:shown]))


def log_odds(p: Any) -> Any:
    """The log-odds of a probability (or an array of them), clipped away from 0 and 1: the student's
    P(yes) scores back to the scale the policy's temperature divides."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)


def _log_weights(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return z - z.max()


@lru_cache(maxsize=MAX_DEPTH + 1)
def _subsets(m: int) -> tuple[np.ndarray, list[np.ndarray]]:
    masks = np.arange(1 << m)
    bits = ((masks[:, None] >> np.arange(m)) & 1).astype(bool)
    size = bits.sum(1)
    return bits, [np.nonzero(size == k)[0] for k in range(m)]


def marginals(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``P[i, k]``: the probability that Plackett-Luce at ``temperature`` puts item ``i`` at position ``k``.

    ``f[S]`` is the probability that the first |S| draws are exactly the set S; each draw of item i
    from the remaining items moves ``f[S] * w_i / (W - w(S))`` from S to S + {i}, and that mass is
    also the probability of i at position |S| through S. Rows and columns each sum to 1.
    """
    lw = _log_weights(logits, temperature)
    m = len(lw)
    if m > MAX_DEPTH:
        raise ValueError(f"{m} items: exact marginals are computed for at most {MAX_DEPTH}")
    bits, layers = _subsets(m)
    # each draw's probability w_i / (unplaced weight) in log space: at a low temperature the weights span
    # more than a float's range, and clipping them would make the light ones tie
    masked = np.where(bits, -np.inf, lw[None, :])
    top = masked.max(1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    with np.errstate(divide="ignore"):  # the set of all items has no weight left: log 0, never read
        log_left = (top + np.log(np.exp(masked - top).sum(1, keepdims=True)))[:, 0]
    f = np.zeros(1 << m)
    f[0] = 1.0
    out = np.zeros((m, m))
    one = 1 << np.arange(m)
    for k, masks in enumerate(layers):
        move = f[masks, None] * np.exp(masked[masks] - log_left[masks][:, None])  # 0 where already placed
        out[:, k] = move.sum(0)
        if k + 1 < m:
            f += np.bincount((masks[:, None] | one[None, :]).ravel(), move.ravel(), minlength=1 << m)
    return out


def request_rng(salt: str, request_id: str) -> np.random.Generator:
    """The draw for one request: the same request id (a retry) gets the same ranking."""
    seed = int.from_bytes(hashlib.sha256(f"explore\x00{salt}\x00{request_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


def draw(logits: np.ndarray, policy: Exploration, rng: np.random.Generator) -> Draw:
    """A ranking of ``logits``' items: Plackett-Luce over the top ``depth``, the rest in score order.

    Sampling uses the Gumbel trick (the order of ``logit / T + Gumbel noise`` is an exact
    Plackett-Luce draw); ties in the deterministic part keep the input order.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n = len(logits)
    ranked = sorted(range(n), key=lambda i: (-logits[i], i))
    top, rest = ranked[: policy.depth], ranked[policy.depth:]
    if len(top) < 2:
        return Draw(ranked, [1.0] * n, [1.0] * n)
    sub = logits[top]
    keys = sub / policy.temperature + rng.gumbel(size=len(top))
    pick = [int(j) for j in np.argsort(-keys, kind="stable")]
    lw = _log_weights(sub, policy.temperature)[pick]
    log_left = np.logaddexp.accumulate(lw[::-1])[::-1]  # the weight still unplaced before each draw
    steps = [float(np.exp(x)) for x in lw - log_left] + [1.0] * len(rest)
    marg = marginals(sub, policy.temperature)
    prop = [float(marg[j, k]) for k, j in enumerate(pick)] + [1.0] * len(rest)
    return Draw([top[j] for j in pick] + rest, prop, steps)
