"""What the trained first stages (HEM/ZAM/QEM, MAPS) share: the sampled loss, one fit loop with
early stopping, and top-k evaluation over the full catalogue."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.metrics import paper_metrics


def nsl(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Negative-sampling loss: -log σ(pos) - Σ log σ(-neg)."""
    return -(nn.functional.logsigmoid(pos) + nn.functional.logsigmoid(-neg).sum(-1)).mean()


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


def fit_epochs(model: nn.Module, opt: torch.optim.Optimizer, train: list[dict[str, Any]], *, epochs: int,
               batch_size: int, patience: int, rng: np.random.Generator,
               batch_loss: Callable[[list[dict[str, Any]]], torch.Tensor],
               val_ndcg4: Callable[[], float], desc: str) -> dict[str, Any]:
    """Shuffled mini-batches each epoch, validation NDCG@4 after it, the best epoch's weights restored."""
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
