"""Position bias: the examination propensity of each served position.

Every item keeps its served position, so a learner can correct for position
bias. ``estimate_propensities`` fits the position-based model (a click needs
the position to be examined and the item to be attractive) by EM over every
shown ranking, the regression-EM of Wang et al. (WSDM 2018) with one
attractiveness per (query, product): it is identifiable because the same item
is shown at different positions by different arms and requests.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import keys
from contract.errors import InputError
from training.clicklog.labels import LabelledRanking


@dataclass
class Propensities:
    """Examination probability by served position, relative to the top (position 0 is 1.0)."""

    by_position: list[float]
    examination: list[float]  # the model's absolute examination probabilities
    impressions: list[int]  # per position, the shown items the fit used
    iterations: int
    method: str = "position-based model, regression-EM with one attractiveness per (query, product)"

    def weight(self, position: int, clip: float) -> float:
        """Inverse propensity, clipped: a rare deep click must not dominate the loss."""
        p = self.by_position[min(position, len(self.by_position) - 1)] if self.by_position else 1.0
        return float(min(1.0 / max(p, 1e-9), clip))


def estimate_propensities(rankings: list[LabelledRanking], max_position: int | None = None,
                          iterations: int = 200, tol: float = 1e-7) -> Propensities:
    """EM for P(click) = theta[position] * gamma[(query, product)] over the shown rankings."""
    pos, pair, click = [], [], []
    pairs: dict[tuple[str, str], int] = {}
    for r in rankings:
        if not r.shown:
            continue
        q = keys.normalize_query(r.query)
        for i in r.items:
            if max_position is not None and i.served_position >= max_position:
                continue
            pos.append(i.served_position)
            pair.append(pairs.setdefault((q, i.product_id), len(pairs)))
            click.append(float(i.clicked))
    if not pos:
        raise InputError("no shown ranking to estimate propensities from (no impression or click joined a ranking)")
    k = np.asarray(pos)
    j = np.asarray(pair)
    c = np.asarray(click)
    n_pos = int(k.max()) + 1
    n_k = np.bincount(k, minlength=n_pos).astype(float)
    n_j = np.bincount(j, minlength=len(pairs)).astype(float)
    theta = np.full(n_pos, 0.5)
    gamma = np.full(len(pairs), 0.5)
    used = 0
    for used in range(1, iterations + 1):  # noqa: B007 - kept: the report says how many iterations ran
        t, g = theta[k], gamma[j]
        denom = np.maximum(1.0 - t * g, 1e-12)
        e_seen = c + (1 - c) * t * (1 - g) / denom  # P(examined | no click) where no click
        r_attr = c + (1 - c) * (1 - t) * g / denom  # P(attractive | no click)
        new_theta = np.clip(np.bincount(k, e_seen, n_pos) / np.maximum(n_k, 1), 1e-6, 1.0)
        gamma = np.clip(np.bincount(j, r_attr, len(pairs)) / np.maximum(n_j, 1), 1e-6, 1 - 1e-6)
        done = float(np.abs(new_theta - theta).max()) < tol
        theta = new_theta
        if done:
            break
    rel = theta / theta[0]
    return Propensities([round(float(x), 6) for x in rel], [round(float(x), 6) for x in theta],
                        [int(x) for x in n_k], used)


def ctr_by_position(rankings: list[LabelledRanking]) -> dict[str, list[tuple[int, int]]]:
    """Per arm: (shown, clicked) at each served position, over shown rankings."""
    acc: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rankings:
        if not r.shown:
            continue
        for i in r.items:
            for arm in (r.arm, "all"):
                acc[arm][i.served_position][0] += 1
                acc[arm][i.served_position][1] += int(i.clicked)
    return {arm: [tuple(v[p]) for p in range(max(v) + 1)] for arm, v in acc.items()}  # type: ignore[misc]


def plot_ctr(ctr: dict[str, list[tuple[int, int]]], props: Propensities | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm, rows in sorted(ctr.items()):
        xs = [p + 1 for p, (n, _) in enumerate(rows) if n]
        ys = [c / n for n, c in rows if n]
        ax.plot(xs, ys, marker="o", label=f"CTR, {arm}", linestyle="-" if arm == "all" else "--")
    if props is not None:
        top = ctr.get("all", [(1, 0)])[0]
        scale = top[1] / top[0] if top[0] else 1.0
        ax.plot([p + 1 for p in range(len(props.by_position))], [scale * x for x in props.by_position],
                color="black", linestyle=":", label="estimated examination x top CTR")
    ax.set_xlabel("served position")
    ax.set_ylabel("click-through rate")
    ax.set_title("CTR by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)  # into from_logs' temporary directory: renamed whole with it
    plt.close(fig)
