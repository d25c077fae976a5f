"""What the trained first stages (HEM/ZAM/QEM, MAPS) share: the sampled loss, samplers, an optimizer
for sparse tables, one fit loop with early stopping, and evaluation over the full catalogue."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.metrics import paper_metrics


def nsl(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Negative-sampling loss: -log σ(pos) - Σ log σ(-neg)."""
    return -(nn.functional.logsigmoid(pos) + nn.functional.logsigmoid(-neg).sum(-1)).mean()


def cdf(weights: np.ndarray, power: float = 0.75) -> np.ndarray:
    """The cumulative distribution of ``weights ** power`` (word2vec's negative-sampling smoothing)."""
    w = np.asarray(weights, np.float64) ** power
    c = np.cumsum(w)
    return c / c[-1]


def draw(rng: np.random.Generator, cdf_: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Indices drawn from a ``cdf`` in O(log n) each (``rng.choice(p=...)`` rebuilds the table per call)."""
    return np.minimum(np.searchsorted(cdf_, rng.random(size), side="right"), len(cdf_) - 1).astype(np.int64)


class SparseDenseAdam:
    """Lazy Adam (``torch.optim.SparseAdam``) for the sparse embedding tables, Adam for everything else.

    Dense Adam touches every row of every table at every step, so an epoch cost steps x (users +
    products): quadratic in the shop's size. Lazy Adam updates only the rows a batch used. Weight decay
    applies to the dense parameters only (SparseAdam has none).
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0):
        sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.opts: list[torch.optim.Optimizer] = []
        if sparse:
            self.opts.append(torch.optim.SparseAdam(sparse, lr=lr))
        if dense:
            self.opts.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay))

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()

    def step(self) -> None:
        for o in self.opts:
            o.step()


class EarlyStopping:
    """Logs each epoch, keeps the weights of the best validation NDCG@4, stops after ``patience`` worse epochs."""

    def __init__(self, patience: int):
        self.patience, self.best, self.bad = patience, -1.0, 0
        self.best_state: dict[str, Any] | None = None
        self.log: list[dict[str, Any]] = []

    def epoch(self, model: nn.Module, loss: float, val_ndcg4: float, seconds: float, bar: Any = None) -> bool:
        """Record one epoch (and show it on a tqdm ``bar``); True when training should stop."""
        self.log.append({"epoch": len(self.log) + 1, "loss": round(loss, 4), "val_NDCG@4": round(val_ndcg4, 4),
                         "seconds": round(seconds, 2)})
        if bar is not None:
            bar.set_postfix(loss=self.log[-1]["loss"], val_ndcg4=self.log[-1]["val_NDCG@4"])
        if val_ndcg4 > self.best:
            self.best, self.best_state, self.bad = val_ndcg4, copy.deepcopy(model.state_dict()), 0
            return False
        self.bad += 1
        return self.bad >= self.patience

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Restore the best weights; the training log every first stage reports."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        best_epoch = max(self.log, key=lambda x: x["val_NDCG@4"])["epoch"] if self.log else 0
        return {"epochs": self.log, "best_epoch": best_epoch, "best_val_NDCG@4": round(self.best, 4)}


def fit_epochs(model: nn.Module, opt: torch.optim.Optimizer | SparseDenseAdam, train: Sequence[Any], *,
               epochs: int, batch_size: int, patience: int, rng: np.random.Generator,
               batch_loss: Callable[[list[Any]], torch.Tensor],
               val_ndcg4: Callable[[], float], desc: str) -> dict[str, Any]:
    """Shuffled mini-batches each epoch (``batch_loss`` gets a batch of ``train``'s items: rows, or row
    indices), validation NDCG@4 after it, the best epoch's weights restored."""
    stopper = EarlyStopping(patience)
    bar = tqdm(range(epochs), desc=desc, unit="ep")
    for _ in bar:
        model.train()
        t0, total, order = time.time(), 0.0, rng.permutation(len(train))
        for start in range(0, len(order), batch_size):
            rows = [train[i] for i in order[start : start + batch_size]]
            loss = batch_loss(rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        if stopper.epoch(model, total / max(1, len(train)), val_ndcg4(), time.time() - t0, bar):
            break
    return stopper.finish(model)


def top_k_metrics(scores: np.ndarray, product_ids: list[str], rows: list[dict[str, Any]], k: int = 10) -> dict[str, Any]:
    """The paper's metrics of each row's top k over full-catalogue ``scores`` (rows x products)."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return paper_metrics([[product_ids[i] for i in r] for r in top], [r["product_id"] for r in rows])


def target_ndcg4(score: Callable[[list[dict[str, Any]]], np.ndarray], rows: list[dict[str, Any]],
                 index: dict[str, int], chunk: int = 1024) -> float:
    """Mean NDCG@4 of each row's purchased product over the full catalogue, scored ``chunk`` rows at a time.

    Only the target's rank is needed (1 + the products scored above it), so no sort and no rows x
    catalogue matrix beyond one chunk: early stopping costs O(rows x products), not O(... log ...).
    """
    total = 0.0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        s = score(part)
        t = np.array([index[r["product_id"]] for r in part])
        rank = 1 + (s > s[np.arange(len(part)), t][:, None]).sum(1)
        total += float(np.where(rank <= 4, 1.0 / np.log2(rank + 1), 0.0).sum())
    return total / max(1, len(rows))
