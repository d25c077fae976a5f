"""The student's input spec: feature layouts and how one request becomes tensors.

Distillation trains on arrays built by ``build_inputs`` and the service scores
arrays built by the same function, so offline and online agree by construction.

Product features, one float32 vector per product (computed offline):

    [ text (MiniLM-L6, unit) | image (teacher vision tower, unit or 0) | has_image | sel (stage-1, unit)
      | pop (0 or 1: popularity) | cf (0 or more: co-purchase vector, unit)
      | seq (0 or more: transition vectors, "bought after" then "bought before" halves) ]

The first four parts come from the product's content (the product encoder
computes them for a new product); ``pop``, ``cf`` and ``seq`` come from the
training interactions and are 0 for a product nobody has bought yet.

Query features: ``[ text (MiniLM-L6, unit) | sel (stage-1 space, unit) ]``.

The ``sel`` slices are the stage-1 embeddings (Eq. 4-5) that history selection
(Eq. 6) compares. The ONNX student takes, for N (query, candidate) pairs:

    query (N, Dq), candidate (N, Dp), history (N, H, Dp), history_mask (N, H)

plus ``signals`` (N, S) when the spec names signal groups (``contract.signals``),
and returns ``logits`` (N, 2) for ["yes", "no"]; the score is their softmax (Eq. 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contract.codec import check_storage
from contract.history import select_history
from contract.signals import Listing, check_groups, compute_signals, signal_dim

INPUT_NAMES = ("query", "candidate", "history", "history_mask")
SIGNALS = "signals"
OUTPUT_NAME = "logits"
# The bundle's encoders (MiniLM-L6 and a projection; the product encoder also reads the image): their ONNX
# input and output names, which the export writes and the service feeds
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUTS = ("pixels", "has_image")
QUERY_ENCODER_INPUTS = TEXT_INPUTS
PRODUCT_ENCODER_INPUTS = TEXT_INPUTS + IMAGE_INPUTS
ENCODER_OUTPUT = "features"


@dataclass(frozen=True)
class FeatureSpec:
    text_dim: int
    image_dim: int
    sel_dim: int
    k_s2: int
    pop_dim: int = 0
    cf_dim: int = 0
    signals: tuple[str, ...] = ()
    storage: str = "float32"  # how product and query vectors are stored in Redis (contract.codec)
    seq_dim: int = 0  # transition vectors: "from" then "to" halves (contract.signals, sequence group)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signals", check_groups(self.signals))
        check_storage(self.storage)
        if self.pop_dim not in (0, 1):
            raise ValueError(f"pop_dim={self.pop_dim}: must be 0 or 1")
        if "popularity" in self.signals and not self.pop_dim:
            raise ValueError("the popularity signal needs a pop slice (pop_dim=1)")
        if "copurchase" in self.signals and not self.cf_dim:
            raise ValueError("the copurchase signal needs co-purchase vectors (cf_dim > 0)")
        if self.seq_dim % 2:
            raise ValueError(f"seq_dim={self.seq_dim}: must be even (a 'from' and a 'to' half)")
        if "sequence" in self.signals and not self.seq_dim:
            raise ValueError("the sequence signal needs transition vectors (seq_dim > 0)")

    @property
    def content_dim(self) -> int:
        """The parts a product's content gives (what the product encoder computes)."""
        return self.text_dim + self.image_dim + 1 + self.sel_dim

    @property
    def product_dim(self) -> int:
        return self.content_dim + self.pop_dim + self.cf_dim + self.seq_dim

    @property
    def query_dim(self) -> int:
        return self.text_dim + self.sel_dim

    @property
    def product_text(self) -> slice:
        return slice(0, self.text_dim)

    @property
    def product_sel(self) -> slice:
        return slice(self.content_dim - self.sel_dim, self.content_dim)

    @property
    def product_pop(self) -> slice:
        return slice(self.content_dim, self.content_dim + self.pop_dim)

    @property
    def product_cf(self) -> slice:
        return slice(self.content_dim + self.pop_dim, self.content_dim + self.pop_dim + self.cf_dim)

    @property
    def product_seq(self) -> slice:
        return slice(self.product_dim - self.seq_dim, self.product_dim)

    @property
    def signal_dim(self) -> int:
        return signal_dim(self.signals)

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES + ((SIGNALS,) if self.signals else ())

    @property
    def query_sel(self) -> slice:
        return slice(self.text_dim, self.query_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"signals": list(self.signals), "product_dim": self.product_dim,
                               "query_dim": self.query_dim, "signal_dim": self.signal_dim,
                               "inputs": list(self.input_names), "output": OUTPUT_NAME, "output_classes": ["yes", "no"]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        # bundles from before the ranking signals have none of the last three fields (nor storage)
        spec = cls(int(d["text_dim"]), int(d["image_dim"]), int(d["sel_dim"]), int(d["k_s2"]),
                   int(d.get("pop_dim", 0)), int(d.get("cf_dim", 0)), tuple(d.get("signals", ())),
                   str(d.get("storage", "float32")), int(d.get("seq_dim", 0)))
        for key in ("product_dim", "query_dim", "signal_dim"):
            if key in d and int(d[key]) != getattr(spec, key):
                raise ValueError(f"spec {key}={d[key]} disagrees with its parts ({getattr(spec, key)})")
        return spec


def select_for(spec: FeatureSpec, query: np.ndarray, candidates: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(K, <= K_s2) indices into ``history`` that each candidate sees (Eq. 6 on the stage-1 slices)."""
    if history.shape[0] == 0 or spec.k_s2 <= 0:
        return np.zeros((candidates.shape[0], 0), dtype=np.int64)
    return select_history(history[:, spec.product_sel], query[spec.query_sel], candidates[:, spec.product_sel], spec.k_s2)


def request_rows(spec: FeatureSpec, query: np.ndarray, candidates: np.ndarray, history: np.ndarray,
                 selected: np.ndarray | None = None, listing: Listing | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """What ``build_inputs`` gathers for one request: (K, K_s2) rows of ``history`` each candidate sees
    (-1 where a slot is empty) and the (K, S) signals (None when the spec has none).

    Offline training keeps these indices instead of the gathered (K, K_s2, Dp) features, which would
    grow as pairs x history slots x feature width.
    """
    k, h = candidates.shape[0], spec.k_s2
    rows = np.full((k, h), -1, dtype=np.int64)
    if history.shape[0] > 0 and h > 0:
        idx = select_for(spec, query, candidates, history) if selected is None else selected
        rows[:, : idx.shape[1]] = idx
    signals = None
    if spec.signals:
        if listing is None:
            raise ValueError(f"this spec's signals {list(spec.signals)} need the request's listing")
        signals = compute_signals(spec.signals, candidates, history, listing, spec.product_text,
                                  spec.product_sel, spec.product_pop, spec.product_cf, spec.product_seq)
    return rows, signals


def gather_history(spec: FeatureSpec, table: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The student's ``history`` (N, K_s2, Dp) and ``history_mask`` (N, K_s2) from row indices into
    ``table`` (-1: an empty slot, zeros and mask 0)."""
    mask = rows >= 0
    hist = table[np.where(mask, rows, 0)].astype(np.float32, copy=False)
    hist[~mask] = 0.0
    return hist.reshape(rows.shape + (spec.product_dim,)), mask.astype(np.float32)


def build_inputs(spec: FeatureSpec, query: np.ndarray, candidates: np.ndarray, history: np.ndarray,
                 selected: np.ndarray | None = None, listing: Listing | None = None) -> dict[str, np.ndarray]:
    """Arrays for one request: K candidates, each with its own K_s2 selected history items.

    Args:
        query: (Dq,) query features.
        candidates: (K, Dp) candidate features.
        history: (n, Dp) features of the user's purchases, oldest first (n may be 0).
        selected: ``select_for``'s result when the caller already has it (to explain a request).
        listing: the request's order, scores and ids; required when the spec has signals.
    """
    k = candidates.shape[0]
    rows, signals = request_rows(spec, query, candidates, history, selected, listing)
    table = history if history.shape[0] else np.zeros((1, spec.product_dim), np.float32)
    hist, mask = gather_history(spec, table, rows)
    out = {
        "query": np.broadcast_to(query.astype(np.float32), (k, spec.query_dim)).copy(),
        "candidate": candidates.astype(np.float32, copy=False),
        "history": hist,
        "history_mask": mask,
    }
    if signals is not None:
        out[SIGNALS] = signals
    return out


def concat_inputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def yes_probability(logits: np.ndarray) -> np.ndarray:
    """Eq. 3: softmax over the ("yes", "no") logits, probability of "yes"."""
    z = logits.astype(np.float64)
    return 1.0 / (1.0 + np.exp(z[:, 1] - z[:, 0]))
