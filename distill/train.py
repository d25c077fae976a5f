"""Training the student: mini-batches of whole lists, early stopping on validation NDCG@4."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.spec import SIGNALS
from distill.lists import TrainingArrays
from distill.student import Student, StudentConfig, distill_loss, listwise_loss
from training.metrics import (
    query_metrics,
)

ROW_INPUTS = ("queries", "query", "products", "candidate", "history", "history_mask")  # Student.forward_rows, signals aside


def _val_ndcg4(margins: np.ndarray, labels: np.ndarray, rows: list[np.ndarray]) -> float:
    """Mean NDCG@4 of the purchased product over validation lists that hold it (stable ties)."""
    out = []
    for r in rows:
        m, y = margins[r], labels[r]
        if y.max() <= 0:
            continue
        p = int(np.argmax(y))
        rank = 1 + int((m > m[p]).sum() + (m[:p] == m[p]).sum())
        out.append(query_metrics(rank)["NDCG@4"])
    return float(np.mean(out)) if out else 0.0


def train_student(spec: Any, cfg: StudentConfig, data: TrainingArrays) -> tuple[Student, list[dict[str, float]]]:
    """Mini-batches of whole lists, so the listwise term sees each list's candidates together.

    A seeded ``val_fraction`` of the lists is held out; the weights of the epoch with the best
    validation NDCG@4 are kept, and training stops after ``patience`` epochs without a better one
    (a few thousand lists and a 100k-parameter network overfit well before ``epochs``).
    """
    torch.manual_seed(cfg.seed)
    tl, ht, lab = (torch.from_numpy(x) for x in (data.teacher_logits, data.has_teacher, data.labels))
    if not cfg.use_teacher:
        ht = torch.zeros_like(ht)
    model = Student(spec, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    starts = data.starts
    n_lists = len(starts) - 1
    width = int(np.diff(starts).max()) if n_lists else 0
    # (L, width) row index of each list, -1 padded
    pad = np.full((n_lists, width), -1, np.int64)
    for i in range(n_lists):
        pad[i, : starts[i + 1] - starts[i]] = np.arange(starts[i], starts[i + 1])
    perm = np.random.default_rng(cfg.seed + 99).permutation(n_lists)
    n_val = int(round(cfg.val_fraction * n_lists)) if n_lists >= 20 else 0
    val, fit = perm[:n_val], perm[n_val:]
    val_rows = [np.arange(starts[i], starts[i + 1])[data.listed[starts[i]:starts[i + 1]]] for i in val]
    val_idx = np.concatenate(val_rows) if n_val else None
    per_batch = max(1, cfg.batch // max(1, width))
    curve: list[dict[str, float]] = []
    best, best_state, bad = -1.0, None, 0
    bar = tqdm(range(cfg.epochs), desc="student epochs", unit="ep")
    for epoch in bar:
        model.train()
        order = fit[torch.randperm(len(fit)).numpy()]
        total, seen = 0.0, 0
        for i in range(0, len(order), per_batch):
            grid = torch.from_numpy(pad[order[i:i + per_batch]])
            valid = grid >= 0
            idx = grid[valid]
            batch = data.rows_for(idx.numpy())  # each distinct query and product of the batch projected once
            logits = model.forward_rows(*(torch.from_numpy(batch[n]) for n in ROW_INPUTS),
                                        *([torch.from_numpy(batch[SIGNALS])] if SIGNALS in batch else []))
            loss = distill_loss(logits, tl[idx], ht[idx], lab[idx], cfg)
            if cfg.listwise_weight > 0:
                loss = loss + cfg.listwise_weight * listwise_loss(logits, lab[idx], valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        sched.step()
        point = {"epoch": epoch + 1, "loss": round(total / max(1, seen), 5)}
        if val_idx is not None:
            model.eval()
            z = np.concatenate([student_logits(model, data.inputs_for(val_idx[j:j + 8192]))
                                for j in range(0, len(val_idx), 8192)])
            margins = np.zeros(len(lab), np.float64)
            margins[val_idx] = z[:, 0] - z[:, 1]
            point["val_NDCG@4"] = round(_val_ndcg4(margins, data.labels, val_rows), 5)
            if point["val_NDCG@4"] > best:
                best, best_state, bad = point["val_NDCG@4"], copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
        curve.append(point)
        bar.set_postfix(point)
        if best_state is not None and bad >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, curve


def best_val_ndcg4(curve: list[dict[str, float]]) -> float | None:
    """The best validation NDCG@4 of a training curve (the epoch kept); None when there was no validation."""
    return max((c["val_NDCG@4"] for c in curve if "val_NDCG@4" in c), default=None)


def student_logits(model: Student, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[n]) for n in model.spec.input_names)).numpy()
