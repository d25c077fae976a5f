"""HEM (Ai et al., SIGIR 2017), ZAM (Ai et al., CIKM 2019) and a sequence model in PyTorch.

All encode a query as f(q) = tanh(W · mean(word embeddings) + b) and score a
product i by <M_uq, i>.

* HEM: M_uq = λ·q + (1-λ)·u with a free user embedding u.
* QEM: M_uq = q, the non-personalized query-item model (Ai et al., CIKM 2019).
* ZAM: M_uq = q + u(q), where u(q) attends over the user's previous purchases
  with a zero vector in the softmax, so a user whose history does not fit the
  query falls back to the query alone:
  u(q) = Σ_i exp(s(q,i))·i / (exp(s(q,0)) + Σ_i exp(s(q,i))), s(q,0) = 0,
  s(q,i) = Σ_h v_h · <i, tanh(W_h q + b_h)> over h attention heads.
* SEQ: M_uq = q + u(q), where u(q) is the output at a query token appended to
  the user's last ``history_len`` purchases, oldest first, after a small
  pre-norm transformer encoder (SASRec, Kang & McAuley, ICDM 2018, with the
  query as the last token, in the spirit of UniSAR's query-aware sequence
  modelling). Each purchase is its item embedding (shared with the output
  side) plus a learned recency embedding (0: the newest), so the model can
  read what was bought last and in what order, not only what was bought.

Training follows the papers' generative framing with negative sampling:
- log σ(<M_uq, i>) + Σ_neg log σ(-<M_uq, i'>) for the purchase,
- the same for P(w | i) over words of the product's text (HEM/ZAM model item
  language this way; reviews are absent from ratings-only data, so the
  product's title, brand, category and description stand in),
- for HEM, P(w | u) over the words of the purchased product.
Negatives are drawn ∝ frequency^0.75. SEQ trains its purchase term as a sampled
softmax instead (cross-entropy of the purchase against products drawn uniformly and
shared by the batch, ``item_loss``), as SASRec-style models train best. Early stopping keeps the epoch with the
best validation NDCG@4 over the full catalogue. Embedding tables are sparse and
trained with lazy Adam (``SparseDenseAdam``): a step's cost is its batch's, not
the number of users and products (dense Adam made an epoch grow with both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.dataset import Dataset
from training.first_stage.base import Catalog, Vocab
from training.first_stage.epochs import (
    SparseDenseAdam,
    cdf,
    draw,
    fit_epochs,
    nsl,
    target_ndcg4,
    top_k_metrics,
)
from training.text import content_terms

KINDS = ("hem", "zam", "qem", "seq")


@dataclass
class NeuralConfig:
    dim: int = 64
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-2  # with lazy Adam on the tables (chosen on validation NDCG@4, docs/benchmarks.md)
    weight_decay: float = 0.0
    negatives: int = 5
    # the purchase term: "nsl" (the papers' negative sampling, ``negatives`` per row, ∝ frequency^0.75) or
    # "softmax" (cross-entropy against ``shared_negatives`` products drawn uniformly once per batch and
    # shared by its rows; the cost is batch × shared_negatives). "" is the model's own: softmax for SEQ
    # (Office validation NDCG@4 0.42 against 0.31 with nsl, docs/results.md), nsl for HEM, ZAM and QEM
    # as their papers train them.
    item_loss: str = ""
    shared_negatives: int = 1024
    word_negatives: int = 5
    words_per_item: int = 5  # sampled text words per purchase for P(w|i), P(w|u)
    word_loss_weight: float = 0.5
    query_len: int = 12
    hem_lambda: float = 0.5
    zam_heads: int = 4
    seq_layers: int = 2  # SEQ: transformer layers, heads, dropout
    seq_heads: int = 2
    seq_dropout: float = 0.1
    history_len: int = 20
    patience: int = 4
    val_fraction: float = 0.15
    seed: int = 0


class QueryEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0, sparse=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens > 0).float().unsqueeze(-1)
        mean = (self.words(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.tanh(self.proj(mean))


class PersonalizedModel(nn.Module):
    def __init__(self, kind: str, n_users: int, n_items: int, vocab_size: int, cfg: NeuralConfig):
        super().__init__()
        self.kind, self.cfg = kind, cfg
        d = cfg.dim
        self.query = QueryEncoder(vocab_size, d)
        # sparse tables: a step updates the rows its batch touched, so its cost does not grow with the catalogue
        self.items = nn.Embedding(n_items + 1, d, padding_idx=n_items, sparse=True)  # last row pads histories
        self.word_out = nn.Embedding(vocab_size, d, sparse=True)
        nn.init.normal_(self.items.weight, std=0.1)
        nn.init.normal_(self.word_out.weight, std=0.1)
        if kind == "hem":
            self.users = nn.Embedding(n_users, d, sparse=True)
            nn.init.normal_(self.users.weight, std=0.1)
        elif kind == "zam":
            self.att = nn.Linear(d, d * cfg.zam_heads)
            self.att_v = nn.Parameter(torch.full((cfg.zam_heads,), 1.0 / cfg.zam_heads))
        elif kind == "seq":
            self.recency = nn.Embedding(cfg.history_len + 1, d)  # 0: the newest purchase; the last row: the query
            layer = nn.TransformerEncoderLayer(d, cfg.seq_heads, 2 * d, cfg.seq_dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.seq_layers, enable_nested_tensor=False)
        self.n_items = n_items

    def user_vec(self, users: torch.Tensor, q: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if self.kind == "hem":
            return self.users(users)
        if self.kind == "qem":
            return torch.zeros_like(q)
        if self.kind == "seq":
            return self._sequence(q, history)
        h = self.items(history)  # (B, L, d)
        keys = torch.tanh(self.att(q)).view(q.shape[0], self.cfg.zam_heads, -1)  # (B, H, d)
        s = torch.einsum("bld,bhd->blh", h, keys) @ self.att_v  # (B, L)
        s = s.masked_fill(history == self.n_items, float("-inf"))
        zero = torch.zeros(s.shape[0], 1, device=s.device)  # s(q, 0) = 0: the zero-attention slot
        w = torch.softmax(torch.cat([zero, s], dim=1), dim=1)[:, 1:]
        return (w.unsqueeze(-1) * h).sum(1)

    def _sequence(self, q: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The encoder's output at the query token; histories are oldest first, padded at the end."""
        pad = history == self.n_items  # (B, L)
        steps = torch.arange(history.shape[1], device=history.device)
        recency = ((~pad).sum(1, keepdim=True) - 1 - steps).clamp(min=0)
        h = self.items(history) + self.recency(recency)
        query = (q + self.recency.weight[-1]).unsqueeze(1)
        mask = torch.cat([pad, torch.zeros_like(pad[:, :1])], dim=1)  # the query token is always there
        return self.encoder(torch.cat([h, query], dim=1), src_key_padding_mask=mask)[:, -1]

    def personal(self, users: torch.Tensor, qtok: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query(qtok)
        u = self.user_vec(users, q, history)
        if self.kind == "hem":
            lam = self.cfg.hem_lambda
            return lam * q + (1 - lam) * u, u
        if self.kind == "qem":
            return q, u
        return q + u, u

    def score_all(self, m: torch.Tensor) -> torch.Tensor:
        return m @ self.items.weight[: self.n_items].T


class NeuralRanker:
    def __init__(self, kind: str, catalog: Catalog, cfg: NeuralConfig):
        if kind not in KINDS:
            raise ValueError(kind)
        self.name, self.kind, self.catalog, self.cfg = kind, kind, catalog, cfg

    # -- tensors ---------------------------------------------------------------
    def _history(self, ds: Dataset, row: dict[str, Any]) -> list[int]:
        hist = [self.catalog.index[p] for p in ds.history(row)][-self.cfg.history_len :]
        return hist + [len(self.catalog.ids)] * (self.cfg.history_len - len(hist))

    def _batch(self, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        users = torch.tensor([self.catalog.users[r["user_id"]] for r in rows])
        q = torch.tensor([self.vocab.encode(content_terms(r["query"]), self.cfg.query_len) for r in rows])
        hist = torch.tensor([self._history(self.ds, r) for r in rows])
        return users, q, hist

    # -- training --------------------------------------------------------------
    def fit(self, ds: Dataset, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.ds = ds
        texts = [content_terms(r["query"]) for r in train] + self.catalog.product_terms
        self.vocab = Vocab(texts)
        n_items = len(self.catalog.ids)
        self.model = PersonalizedModel(self.kind, len(self.catalog.users), n_items, len(self.vocab), cfg)
        opt = SparseDenseAdam(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay)

        # every training row as tensors once, so a batch is a gather (no per-row Python in the loop)
        users, queries, hist = self._batch(train)
        targets = torch.tensor([self.catalog.index[r["product_id"]] for r in train])
        item_cdf = cdf(np.bincount(targets.numpy(), minlength=n_items) + 1.0)
        word_cdf = cdf(self.vocab.counts)
        words = [[self.vocab.index[t] for t in terms if t in self.vocab.index] or [1] for terms in self.catalog.product_terms]
        word_len = np.array([len(w) for w in words])
        word_mat = np.zeros((n_items, int(word_len.max())), np.int64)
        for i, w in enumerate(words):
            word_mat[i, : len(w)] = w

        model = self.model

        def batch_loss(idx: list[int]) -> torch.Tensor:
            b = torch.as_tensor(idx)
            n = len(idx)
            target = targets[b]
            m, u = model.personal(users[b], queries[b], hist[b])
            item_t = model.items(target)
            pos = (m * item_t).sum(-1)
            if cfg.item_loss == "softmax":
                shared = torch.from_numpy(rng.integers(0, n_items, min(cfg.shared_negatives, n_items)))
                neg_logits = m @ model.items(shared).T
                # a row's own purchase drawn as a negative is not one
                neg_logits = neg_logits.masked_fill(shared[None, :] == target[:, None], float("-inf"))
                loss = nn.functional.cross_entropy(torch.cat([pos[:, None], neg_logits], 1),
                                                   torch.zeros(n, dtype=torch.long))
            else:
                neg = torch.from_numpy(draw(rng, item_cdf, (n, cfg.negatives)))
                loss = nsl(pos, torch.einsum("bd,bkd->bk", m, model.items(neg)))
            # P(w | i) and, for HEM, P(w | u) over the purchased product's words (sampled with replacement)
            t = target.numpy()
            pick = (rng.random((n, cfg.words_per_item)) * word_len[t][:, None]).astype(np.int64)
            w_pos = torch.from_numpy(np.take_along_axis(word_mat[t], pick, axis=1))
            w_neg = torch.from_numpy(draw(rng, word_cdf, (n, cfg.words_per_item, cfg.word_negatives)))
            # the words are looked up once for both entities: one sparse gradient per step for the table, not
            # one per entity to be merged (a HEM epoch at 20,000 users: 6.6 against 8.0 s on one thread)
            out_pos, out_neg = model.word_out(w_pos), model.word_out(w_neg)
            for ent in ([item_t, u] if self.kind == "hem" else [item_t]):
                pos = torch.einsum("bd,bwd->bw", ent, out_pos)
                negs = torch.einsum("bd,bwkd->bwk", ent, out_neg)
                loss = loss + cfg.word_loss_weight * nsl(pos.reshape(-1), negs.reshape(-1, cfg.word_negatives))
            return loss

        log = fit_epochs(model, opt, range(len(train)), epochs=cfg.epochs, batch_size=cfg.batch_size,
                         patience=cfg.patience, rng=rng, batch_loss=batch_loss, desc=f"{self.kind} epochs",
                         val_ndcg4=lambda: target_ndcg4(self.score, val, self.catalog.index) if val else 0.0)
        return log | {
            "vocabulary": len(self.vocab), "config": asdict(cfg)}

    @classmethod
    def from_state(cls, state: dict[str, Any], catalog: Catalog, ds: Dataset) -> NeuralRanker:
        """The fitted ranker that ``state()`` saved, for scoring ``ds``'s queries (the same catalogue)."""
        if state["products"] != catalog.ids or state["users"] != catalog.users:
            raise ValueError("this first-stage state was fitted on another catalogue or other users")
        ranker = cls(state["kind"], catalog, NeuralConfig(**state["config"]))
        ranker.ds, ranker.vocab = ds, Vocab.from_words(state["vocab"])
        ranker.model = PersonalizedModel(ranker.kind, len(catalog.users), len(catalog.ids), len(ranker.vocab),
                                         ranker.cfg)
        ranker.model.load_state_dict(state["state_dict"])
        ranker.model.eval()
        return ranker

    @torch.no_grad()
    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        self.model.eval()
        out = []
        for start in range(0, len(rows), 512):
            users, q, hist = self._batch(rows[start : start + 512])
            m, _ = self.model.personal(users, q, hist)
            out.append(self.model.score_all(m).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.catalog.ids)))

    def evaluate(self, rows: list[dict[str, Any]], k: int = 10) -> dict[str, Any]:
        return top_k_metrics(self.score(rows), self.catalog.ids, rows, k)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": asdict(self.cfg), "vocab": self.vocab.words,
                "products": self.catalog.ids, "users": self.catalog.users, "state_dict": self.model.state_dict()}
