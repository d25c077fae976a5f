"""The student's input spec: feature layouts and how one request becomes tensors.

Distillation trains on arrays built by ``build_inputs`` and the service scores
arrays built by the same function, so offline and online agree by construction.

Product features, one float32 vector per product (computed offline):

    [ text (MiniLM-L6, unit) | image (teacher vision tower, unit or 0) | has_image | sel (stage-1, unit) ]

Query features: ``[ text (MiniLM-L6, unit) | sel (stage-1 space, unit) ]``.

The ``sel`` slices are the stage-1 embeddings (Eq. 4-5) that history selection
(Eq. 6) compares. The ONNX student takes, for N (query, candidate) pairs:

    query (N, Dq), candidate (N, Dp), history (N, H, Dp), history_mask (N, H)

and returns ``logits`` (N, 2) for ["yes", "no"]; the score is their softmax (Eq. 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contract.history import select_history

INPUT_NAMES = ("query", "candidate", "history", "history_mask")
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class FeatureSpec:
    text_dim: int
    image_dim: int
    sel_dim: int
    k_s2: int

    @property
    def product_dim(self) -> int:
        return self.text_dim + self.image_dim + 1 + self.sel_dim

    @property
    def query_dim(self) -> int:
        return self.text_dim + self.sel_dim

    @property
    def product_sel(self) -> slice:
        return slice(self.product_dim - self.sel_dim, self.product_dim)

    @property
    def query_sel(self) -> slice:
        return slice(self.text_dim, self.query_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"product_dim": self.product_dim, "query_dim": self.query_dim,
                               "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME, "output_classes": ["yes", "no"]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        spec = cls(int(d["text_dim"]), int(d["image_dim"]), int(d["sel_dim"]), int(d["k_s2"]))
        for key in ("product_dim", "query_dim"):
            if key in d and int(d[key]) != getattr(spec, key):
                raise ValueError(f"spec {key}={d[key]} disagrees with its parts ({getattr(spec, key)})")
        return spec


def select_for(spec: FeatureSpec, query: np.ndarray, candidates: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(K, <= K_s2) indices into ``history`` that each candidate sees (Eq. 6 on the stage-1 slices)."""
    if history.shape[0] == 0 or spec.k_s2 <= 0:
        return np.zeros((candidates.shape[0], 0), dtype=np.int64)
    return select_history(history[:, spec.product_sel], query[spec.query_sel], candidates[:, spec.product_sel], spec.k_s2)


def build_inputs(spec: FeatureSpec, query: np.ndarray, candidates: np.ndarray, history: np.ndarray,
                 selected: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Arrays for one request: K candidates, each with its own K_s2 selected history items.

    Args:
        query: (Dq,) query features.
        candidates: (K, Dp) candidate features.
        history: (n, Dp) features of the user's purchases, oldest first (n may be 0).
        selected: ``select_for``'s result when the caller already has it (to explain a request).
    """
    k = candidates.shape[0]
    h = spec.k_s2
    hist = np.zeros((k, h, spec.product_dim), dtype=np.float32)
    mask = np.zeros((k, h), dtype=np.float32)
    if history.shape[0] > 0 and h > 0:
        idx = select_for(spec, query, candidates, history) if selected is None else selected
        m = idx.shape[1]
        hist[:, :m] = history[idx]
        mask[:, :m] = 1.0
    return {
        "query": np.broadcast_to(query.astype(np.float32), (k, spec.query_dim)).copy(),
        "candidate": candidates.astype(np.float32, copy=False),
        "history": hist,
        "history_mask": mask,
    }


def concat_inputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in INPUT_NAMES}


def yes_probability(logits: np.ndarray) -> np.ndarray:
    """Eq. 3: softmax over the ("yes", "no") logits, probability of "yes"."""
    z = logits.astype(np.float64)
    return 1.0 / (1.0 + np.exp(z[:, 1] - z[:, 0]))
