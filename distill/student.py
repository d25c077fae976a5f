"""The online student: a small fusion network over precomputed features.

For each (query, candidate) pair it attends from the candidate over the
candidate's K_s2 selected history items, adds explicit query-candidate and
history-candidate similarities of the text and stage-1 slices, and maps the
fused vector to ("yes", "no") logits. All heavy encoding happened offline, so
one batched call for K=10 is a few small matrix products.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from contract.signals import DEFAULT_GROUPS, check_groups
from contract.spec import FeatureSpec


@dataclass
class StudentConfig:
    dim: int = 128
    hidden: int = 256
    dropout: float = 0.1
    temperature: float = 2.0
    hard_weight: float = 0.5  # weight of the hard-label CE next to the soft KL term
    # False: the same student with no soft targets (the KL term is dropped on every pair), the ablation
    # that says what the teacher's logits add
    use_teacher: bool = True
    extra_negatives: int = 2  # random catalog products per training list (hard label only)
    # ranking signals the student reads (contract/signals.py); [] gives the content-only student
    signals: list[str] = field(default_factory=lambda: list(DEFAULT_GROUPS))
    # groups distillation also tries, one at a time, on top of ``signals``: the student with the best
    # validation NDCG@4 ships (a shop's choice made on its training lists only; [] trains ``signals`` alone).
    # Sequence signals help where purchases follow each other (Office) and not elsewhere (docs/results.md).
    try_signals: list[str] = field(default_factory=lambda: ["sequence"])
    # with ``try_signals``, train the variants side by side, a process each, when there are
    # as many cores (``distill.run.train_chosen``); False trains them one after the other
    parallel_variants: bool = True
    cf_dim: int = 32  # co-purchase vector size
    seq_dim: int = 32  # transition vectors ("from" and "to" halves of seq_dim / 2 each)
    # What the product tower reads: "content" (text, image, stage-1 slices) or "all" (also the popularity
    # and co-purchase slices, as before). The co-purchase vectors come from one eigendecomposition per
    # cross-fitting fold, so their coordinates (unlike their cosines, which the copurchase signals carry)
    # differ between the training folds and the served tables; on a catalogue of ~100 products the tower
    # also learns them as per-product ids. Checkpoints written before this field load as "all".
    tower_reads: str = "content"
    # softmax cross-entropy of the purchased product over its list (NDCG rewards the list's order,
    # which the pointwise terms see one pair at a time)
    listwise_weight: float = 1.0
    # a seeded sample of the training lists (0: all), every teacher-scored list kept: bounds an epoch's
    # cost on a large shop (Office has 35,069 lists, under it)
    max_lists: int = 50_000
    val_fraction: float = 0.1  # of the training lists: picks the epoch (early stopping)
    patience: int = 8
    epochs: int = 40
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        check_groups(self.signals)  # names an unknown group before any training starts
        check_groups(self.try_signals)
        if self.cf_dim < 1:
            raise ValueError(f"cf_dim={self.cf_dim}: must be at least 1")
        if self.seq_dim < 2 or self.seq_dim % 2:
            raise ValueError(f"seq_dim={self.seq_dim}: must be even and at least 2")
        if self.max_lists < 0:
            raise ValueError(f"max_lists={self.max_lists}: must be 0 (all) or positive")
        if self.tower_reads not in ("content", "all"):
            raise ValueError(f"tower_reads={self.tower_reads!r}: must be 'content' or 'all'")

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> StudentConfig:
        """A saved config; one saved before ``tower_reads`` existed had the tower read every slice."""
        return cls(**({"tower_reads": "all"} | d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class Student(nn.Module):
    def __init__(self, spec: FeatureSpec, cfg: StudentConfig):
        super().__init__()
        self.spec = spec
        d = cfg.dim
        self.tower_dim = spec.content_dim if cfg.tower_reads == "content" else spec.product_dim
        self.p_proj = nn.Sequential(nn.Linear(self.tower_dim, d), nn.LayerNorm(d))
        self.q_proj = nn.Sequential(nn.Linear(spec.query_dim, d), nn.LayerNorm(d))
        n_sims = 4
        n_sig = spec.signal_dim
        self.head = nn.Sequential(
            nn.Linear(5 * d + n_sims + 1 + n_sig, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden // 2), nn.GELU(),
            nn.Linear(cfg.hidden // 2, 2),
        )
        # wide path: a rule such as "bought before -> lower" is one weight away, not a pattern to discover
        self.wide = nn.Linear(n_sig, 2) if n_sig else None

    def forward(self, query: torch.Tensor, candidate: torch.Tensor, history: torch.Tensor,
                history_mask: torch.Tensor, signals: torch.Tensor | None = None) -> torch.Tensor:
        """("yes", "no") logits per pair: what the ONNX student computes (``contract.spec`` inputs)."""
        s = self.spec
        t, ps, qs = slice(0, s.text_dim), s.product_sel, s.query_sel
        return self._fuse(self.q_proj(query), _norm(query[:, t]), _norm(query[:, qs]),
                          self.p_proj(candidate[:, : self.tower_dim]), self.p_proj(history[:, :, : self.tower_dim]),
                          _norm(candidate[:, t]), _norm(candidate[:, ps]), _norm(history[:, :, t]),
                          _norm(history[:, :, ps]), history_mask, signals)

    def forward_rows(self, queries: torch.Tensor, query: torch.Tensor, products: torch.Tensor, candidate: torch.Tensor,
                     history: torch.Tensor, history_mask: torch.Tensor, signals: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """``forward`` with query = queries[query], candidate = products[candidate] and history =
        products[history] (row indices; an empty history slot may point anywhere, the mask drops it): each
        distinct query and product of a batch is projected once. In training a batch's 252 pairs read about 21
        queries, and their 252 candidates and 504 history slots about 284 products (a list's candidates share
        its query and one user's history)."""
        s = self.spec
        t, ps, qs = slice(0, s.text_dim), s.product_sel, s.query_sel
        q, q_t, q_s = self.q_proj(queries), _norm(queries[:, t]), _norm(queries[:, qs])
        p, p_t, p_s = self.p_proj(products[:, : self.tower_dim]), _norm(products[:, t]), _norm(products[:, ps])
        return self._fuse(q[query], q_t[query], q_s[query], p[candidate], p[history], p_t[candidate], p_s[candidate],
                          p_t[history], p_s[history], history_mask, signals)

    def _fuse(self, q: torch.Tensor, q_t: torch.Tensor, q_s: torch.Tensor, c: torch.Tensor, h: torch.Tensor,
              cand_t: torch.Tensor, cand_s: torch.Tensor, hist_t: torch.Tensor, hist_s: torch.Tensor,
              history_mask: torch.Tensor, signals: torch.Tensor | None) -> torch.Tensor:
        """The logits from the projected query (N, d), candidate (N, d) and history (N, H, d), and the unit
        text and stage-1 slices of all three."""
        # candidate-attended history; an empty history pools to zeros
        att = (h * c.unsqueeze(1)).sum(-1) / (c.shape[-1] ** 0.5)
        att = att.masked_fill(history_mask < 0.5, -1e4)
        w = torch.softmax(att, dim=-1) * history_mask
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-6)
        hv = (w.unsqueeze(-1) * h).sum(1)
        has_hist = (history_mask.sum(-1, keepdim=True) > 0).float()
        # explicit similarities: text and stage-1 space, query-candidate and history-candidate
        hist_t = hist_t * history_mask.unsqueeze(-1)
        hist_s = hist_s * history_mask.unsqueeze(-1)
        n_hist = history_mask.sum(-1).clamp(min=1.0)
        sims = torch.stack([
            (q_t * cand_t).sum(-1),
            (q_s * cand_s).sum(-1),
            (hist_t * cand_t.unsqueeze(1)).sum(-1).sum(-1) / n_hist,
            (hist_s * cand_s.unsqueeze(1)).sum(-1).sum(-1) / n_hist,
        ], dim=-1)
        parts = [q, c, hv, q * c, hv * c, sims, has_hist]
        if self.wide is None:
            return self.head(torch.cat(parts, dim=-1))
        if signals is None:
            raise ValueError(f"this student reads signals {list(self.spec.signals)}; none were given")
        return self.head(torch.cat([*parts, signals], dim=-1)) + self.wide(signals)


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, has_teacher: torch.Tensor,
                 labels: torch.Tensor, cfg: StudentConfig) -> torch.Tensor:
    """T^2-scaled KL to the teacher's yes/no distribution (where scored) plus the hard-label CE."""
    tau = cfg.temperature
    log_p = torch.log_softmax(logits / tau, dim=-1)
    p_t = torch.softmax(teacher_logits / tau, dim=-1)
    kl = (p_t * (torch.log(p_t.clamp(min=1e-9)) - log_p)).sum(-1) * tau * tau
    kl = (kl * has_teacher).sum() / has_teacher.sum().clamp(min=1.0)
    # class 0 is "yes": label 1 (purchased) -> target index 0
    ce = nn.functional.cross_entropy(logits, (1 - labels).long())
    return (1 - cfg.hard_weight) * kl + cfg.hard_weight * ce


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over lists with a purchase of -log softmax(yes - no margin over the list)[purchased].

    ``logits`` and ``labels`` are the rows of ``valid``'s True cells, row-major: (L, width) lists.
    """
    margin = logits[:, 0] - logits[:, 1]
    grid = torch.full(valid.shape, -1e4, dtype=margin.dtype)
    grid[valid] = margin
    pos = torch.zeros(valid.shape, dtype=labels.dtype)
    pos[valid] = labels
    has = pos.sum(1) > 0
    if not bool(has.any()):
        return margin.sum() * 0.0
    lse = torch.logsumexp(grid[has], dim=1)
    target = (grid[has] * pos[has]).sum(1) / pos[has].sum(1)
    return (lse - target).mean()
