"""What the trained first stages (HEM/ZAM/QEM, MAPS) share: the sampled loss and epoch bookkeeping."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


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
