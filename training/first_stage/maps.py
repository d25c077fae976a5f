"""MAPS (Qin et al., "Motivation-Aware Personalized Search"), paper 002, as a first-stage ranker.

What is built, by the paper's section:

4.1 ID-text fusion. Every text (product, query, consultation, keyword) goes
    through a *frozen* pretrained LM (all-MiniLM-L6-v2, shipped on PyPI); its
    token states, not a mean, are mapped by a trainable FFN to ``dim`` and
    pooled by MoAE: ``experts_per_type`` experts of each of three types
    (parameterized query, self-attention, search-centred cross-attention on the
    current query; the cross type is off for query texts), top-k gated. An item
    is act(W [text ; item-ID ; category-ID]) (Eq. 1), a user act(W [user-ID]).
4.2 General alignment. Each product's full-text collection (its own text, the
    queries it was bought under, the consultations before those purchases)
    keeps the words whose frequency in search-related texts (queries and
    consultations) reaches ``gamma`` (Eq. 2); the (word, item) pairs train a
    bidirectional contrastive loss with in-batch negatives and temperatures
    ``tau_item``/``tau_token``.
4.3 Personalized alignment. A transformer encoder over [query ; consultation
    history] and another over [query ; query history] give two motivation
    vectors (first position), mixed by learnable weights; a third encoder over
    [motivation query ; item history] plus the user embedding gives the final
    query vector M. Score(i) = <M, e_i>, trained with negative sampling.

Ablation switches (``--set``): ``moae=false`` (masked mean pooling),
``general_align=false``, ``gamma=0`` (no Eq. 2 threshold),
``personal_align=false`` (M = e_q + e_u), ``consultations=false``.
Early stopping keeps the epoch with the best validation NDCG@4, as HEM/ZAM do.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.dataset import Dataset
from training.first_stage.base import Catalog
from training.first_stage.epochs import fit_epochs, nsl, target_ndcg4, top_k_metrics
from training.text import content_terms


@dataclass
class MapsConfig:
    dim: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    negatives: int = 10
    history_len: int = 10  # item and query history
    consultation_len: int = 5
    item_tokens: int = 48
    query_tokens: int = 12
    consultation_tokens: int = 40
    experts_per_type: int = 2
    top_k: int = 2
    moae: bool = True
    layers: int = 1
    heads: int = 2
    general_align: bool = True
    align_weight: float = 0.5  # lambda of the overall loss
    gamma: int = 3  # Eq. 2 frequency threshold in search-related texts; 0 keeps every word
    align_pairs: int = 128  # (word, item) pairs per batch
    tau_item: float = 0.1
    tau_token: float = 0.1
    personal_align: bool = True
    consultations: bool = True
    patience: int = 4
    val_fraction: float = 0.15
    threads: int = 0
    seed: int = 0


# -- frozen LM token states --------------------------------------------------------------------------

class TokenStates:
    """Last-layer token states of the frozen LM for a list of texts, padded to ``max_tokens``."""

    def __init__(self, states: torch.Tensor, mask: torch.Tensor):
        self.states, self.mask = states, mask  # (N, L, H) float16, (N, L) bool

    @classmethod
    @torch.no_grad()
    def encode(cls, model: Any, tokenizer: Any, texts: list[str], max_tokens: int, desc: str) -> TokenStates:
        hidden = int(model.config.hidden_size)
        states = torch.zeros(len(texts), max_tokens, hidden, dtype=torch.float16)
        mask = torch.zeros(len(texts), max_tokens, dtype=torch.bool)
        for i in tqdm(range(0, len(texts), 64), desc=desc, unit="batch", leave=False):
            enc = tokenizer(texts[i:i + 64] or [""], padding="max_length", truncation=True, max_length=max_tokens,
                            return_tensors="pt")
            states[i:i + 64] = model(**enc).last_hidden_state.half()
            mask[i:i + 64] = enc["attention_mask"].bool()
        return cls(states, mask)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[idx].float(), self.mask[idx]


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class MoAE(nn.Module):
    """Mixture of Attention Experts pooling (Sec. 4.1.1): three expert types, top-k softmax gate."""

    def __init__(self, dim: int, n: int, top_k: int):
        super().__init__()
        self.dim, self.n, self.top_k = dim, n, top_k
        self.param_query = nn.Parameter(torch.randn(n, dim) * 0.1)
        self.param_key = nn.Linear(dim, dim * n)
        self.self_query = nn.Linear(dim, dim * n)
        self.self_key = nn.Linear(dim, dim * n)
        self.cross_query = nn.Linear(dim, dim * n)
        self.cross_key = nn.Linear(dim, dim * n)
        self.gate = nn.Linear(dim, 3 * n)

    def _static(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token weights of the parameterized and self-attention experts (N, 2n, L): they ignore the query."""
        N, L, d = x.shape
        n, scale = self.n, math.sqrt(d)
        kp = self.param_key(x).view(N, L, n, d)
        w_param = _masked_softmax(torch.einsum("nlhd,hd->nhl", kp, self.param_query) / scale, mask.unsqueeze(1))
        qs, ks = self.self_query(x).view(N, L, n, d), self.self_key(x).view(N, L, n, d)
        att = _masked_softmax(torch.einsum("nshd,nthd->nhst", qs, ks) / scale, mask[:, None, None, :])
        # a token's weight: the attention it receives, averaged over the real (unpadded) tokens
        src = mask[:, None, :, None].float()
        w_self = (att * src).sum(2) / src.sum(2).clamp(min=1.0)
        return torch.cat([w_param, w_self], dim=1), self.gate(_masked_mean(x, mask))

    def _cross(self, x: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        N, L, d = x.shape
        qc, kc = self.cross_query(ctx).view(N, self.n, d), self.cross_key(x).view(N, L, self.n, d)
        return _masked_softmax(torch.einsum("nhd,nlhd->nhl", qc, kc) / math.sqrt(d), mask.unsqueeze(1))

    def weights(self, x: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Per-expert token weights (N, 3n, L); the cross experts' are zero without a search context."""
        w_static, _ = self._static(x, mask)
        w_cross = torch.zeros_like(w_static[:, : self.n]) if ctx is None else self._cross(x, mask, ctx)
        return torch.cat([w_static, w_cross], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor | None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """Pool texts ``x`` (U, L, d); with ``index`` (N,), row r pools text index[r] under ctx[r].

        The query-independent experts run once per distinct text, which is most of the work when a
        batch repeats products under different queries.
        """
        w_static, logits = self._static(x, mask)
        pooled = torch.einsum("nel,nld->ned", w_static, x)  # (U, 2n, d)
        if index is not None:
            pooled, logits, x, mask = pooled[index], logits[index], x[index], mask[index]
        if ctx is None:  # the search-centred experts are not activated for query texts
            pooled = torch.cat([pooled, torch.zeros_like(pooled[:, : self.n])], 1)
            logits = torch.cat([logits[:, : 2 * self.n], torch.full_like(logits[:, 2 * self.n:], -1e9)], 1)
        else:
            pooled = torch.cat([pooled, torch.einsum("nel,nld->ned", self._cross(x, mask, ctx), x)], 1)
        top, idx = logits.topk(min(self.top_k, 3 * self.n), dim=-1)
        g = torch.softmax(top, dim=-1)
        chosen = torch.gather(pooled, 1, idx.unsqueeze(-1).expand(-1, -1, pooled.shape[-1]))
        return (g.unsqueeze(-1) * chosen).sum(1)


def _encoder(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.1, batch_first=True,
                                       activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class MapsModel(nn.Module):
    def __init__(self, cfg: MapsConfig, lm_dim: int, n_users: int, n_items: int, n_categories: int):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.token_map = nn.Sequential(nn.Linear(lm_dim, d), nn.GELU())  # trainable FFN over frozen LM states
        self.pool = MoAE(d, cfg.experts_per_type, cfg.top_k)
        self.item_id = nn.Embedding(n_items, d)
        self.category_id = nn.Embedding(n_categories, d)
        self.user_id = nn.Embedding(n_users, d)
        for emb in (self.item_id, self.category_id, self.user_id):
            nn.init.normal_(emb.weight, std=0.1)
        self.item_out = nn.Linear(3 * d, d)
        self.query_out = nn.Linear(d, d)
        self.consult_out = nn.Linear(d, d)
        self.user_out = nn.Linear(d, d)
        self.consult_enc = _encoder(d, cfg.heads, cfg.layers)
        self.query_enc = _encoder(d, cfg.heads, cfg.layers)
        self.item_enc = _encoder(d, cfg.heads, cfg.layers)
        self.mix = nn.Parameter(torch.tensor([0.5, 0.5]))  # learnable weights of the two motivation vectors

    def text(self, states: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor | None,
             index: torch.Tensor | None = None) -> torch.Tensor:
        """Embed distinct texts ``states`` (U, L, H); ``index`` maps output rows to them (see MoAE)."""
        x = self.token_map(states)
        if not self.cfg.moae:
            pooled = _masked_mean(x, mask)
            return pooled if index is None else pooled[index]
        return self.pool(x, mask, ctx, index)

    def query_context(self, q_states: torch.Tensor, q_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled query text: the cross experts' attention query, query embedding e_q)."""
        pooled = self.text(q_states, q_mask, None)
        return pooled, nn.functional.gelu(self.query_out(pooled))

    def items(self, states: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, cats: torch.Tensor,
              ctx: torch.Tensor | None, index: torch.Tensor | None = None) -> torch.Tensor:
        """Item embeddings (Eq. 1); ``states``/``ids``/``cats`` are distinct items, ``index`` picks rows."""
        t = self.text(states, mask, ctx, index)
        if index is not None:
            ids, cats = ids[index], cats[index]
        return nn.functional.gelu(self.item_out(torch.cat([t, self.item_id(ids), self.category_id(cats)], -1)))

    def consultations(self, states: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor,
                      index: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.gelu(self.consult_out(self.text(states, mask, ctx, index)))

    @staticmethod
    def _first(enc: nn.TransformerEncoder, anchor: torch.Tensor, seq: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([anchor.unsqueeze(1), seq], 1)
        pad = torch.cat([torch.zeros_like(seq_mask[:, :1]), ~seq_mask], 1)
        return enc(x, src_key_padding_mask=pad)[:, 0]

    def personal(self, e_q: torch.Tensor, users: torch.Tensor, consult: torch.Tensor, consult_mask: torch.Tensor,
                 qhist: torch.Tensor, qhist_mask: torch.Tensor, ihist: torch.Tensor, ihist_mask: torch.Tensor) -> torch.Tensor:
        e_u = nn.functional.gelu(self.user_out(self.user_id(users)))
        if not self.cfg.personal_align:
            return e_q + e_u
        m_c = self._first(self.consult_enc, e_q, consult, consult_mask)
        m_s = self._first(self.query_enc, e_q, qhist, qhist_mask)
        q_m = self.mix[0] * m_c + self.mix[1] * m_s
        return self._first(self.item_enc, q_m, ihist, ihist_mask) + e_u


def product_text(p: dict[str, Any]) -> str:
    return ". ".join(s for s in (p.get("title"), p.get("brand"), " > ".join(p.get("category") or []),
                                 " ".join((p.get("description") or "").split()[:60])) if s)


class MapsRanker:
    """The ``Ranker`` seam over MAPS."""

    name = "maps"

    def __init__(self, catalog: Catalog, cfg: MapsConfig):
        self.catalog, self.cfg = catalog, cfg

    # -- inputs ------------------------------------------------------------------------------------
    def _prepare(self, ds: Dataset, train: list[dict[str, Any]]) -> None:
        from transformers import AutoModel, AutoTokenizer

        from training.pretrained import LOAD_KWARGS, hub_free, minilm_dir, offline

        offline()
        cfg = self.cfg
        self.ds = ds
        path = minilm_dir()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = hub_free(AutoModel.from_pretrained(path, **LOAD_KWARGS)).eval()
        self.lm_dim = int(lm.config.hidden_size)
        ids = self.catalog.ids
        self.item_states = TokenStates.encode(lm, tok, [product_text(ds.products[p]) for p in ids], cfg.item_tokens, "LM: products")
        leaf = [" > ".join(ds.products[p].get("category") or ["?"]) for p in ids]
        self.categories = sorted(set(leaf))
        self.item_cat = torch.tensor([self.categories.index(c) for c in leaf])
        self.query_texts = sorted({r["query"] for r in ds.queries()})
        self.query_index = {q: i for i, q in enumerate(self.query_texts)}
        self.query_states = TokenStates.encode(lm, tok, self.query_texts, cfg.query_tokens, "LM: queries")
        chats = ds.consultations() if cfg.consultations else {}
        self.chats = [(u, c["timestamp"]) for u, cs in sorted(chats.items()) for c in cs]
        self.chat_by_user: dict[str, list[int]] = {}
        for i, (u, _) in enumerate(self.chats):
            self.chat_by_user.setdefault(u, []).append(i)
        chat_texts = [c["text"] for _, cs in sorted(chats.items()) for c in cs]
        self.chat_states = TokenStates.encode(lm, tok, chat_texts or [""], cfg.consultation_tokens, "LM: consultations")
        self.words, self.pairs = self._alignment_pairs(ds, train, chats)
        self.word_states = TokenStates.encode(lm, tok, self.words or [""], 6, "LM: keywords")

    def _alignment_pairs(self, ds: Dataset, train: list[dict[str, Any]],
                         chats: dict[str, list[dict[str, Any]]]) -> tuple[list[str], np.ndarray]:
        """Eq. 2: (word, item) pairs from each item's full-text collection, words frequent in search texts."""
        search_texts = [r["query"] for r in train] + [c["text"] for cs in chats.values() for c in cs]
        freq = Counter(t for text in search_texts for t in content_terms(text))
        collection: dict[int, set[str]] = {i: set(terms) for i, terms in enumerate(self.catalog.product_terms)}
        for r in train:
            i = self.catalog.index[r["product_id"]]
            collection[i].update(content_terms(r["query"]))
            before = [c for c in chats.get(r["user_id"], []) if c["timestamp"] < r["timestamp"]]
            if before and r["timestamp"] - before[-1]["timestamp"] <= 86400:  # the chat that led to this purchase
                collection[i].update(content_terms(before[-1]["text"]))
        keep = {w for ws in collection.values() for w in ws if freq[w] >= self.cfg.gamma}
        words = sorted(keep)
        index = {w: j for j, w in enumerate(words)}
        pairs = np.array([(index[w], i) for i, ws in collection.items() for w in sorted(ws) if w in index],
                         dtype=np.int64).reshape(-1, 2)
        return words, pairs

    def _item_vecs(self, ids: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Embeddings of items ``ids`` (any shape), row r under search context ctx[r] (rows flattened)."""
        flat = ids.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        s, k = self.item_states.take(uniq)
        return self.model.items(s, k, uniq, self.item_cat[uniq], ctx, inverse).view(*ids.shape, -1)

    def _user_context(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        cfg = self.cfg
        seq = self.ds.by_user()[row["user_id"]][: row["seq"]]
        items = [self.catalog.index[r["product_id"]] for r in seq][-cfg.history_len:]
        queries = [self.query_index[r["query"]] for r in seq if r.get("query")][-cfg.history_len:]
        chats = [i for i in self.chat_by_user.get(row["user_id"], []) if self.chats[i][1] < row["timestamp"]]
        return items, queries, chats[-cfg.consultation_len:]

    @staticmethod
    def _pad(lists: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, width)
        idx = torch.zeros(len(lists), width, dtype=torch.long)
        mask = torch.zeros(len(lists), width, dtype=torch.bool)
        for r, xs in enumerate(lists):
            if xs:
                idx[r, : len(xs)] = torch.tensor(xs)
                mask[r, : len(xs)] = True
        return idx, mask

    def _history_vectors(self, e_q_ctx: torch.Tensor, rows: list[dict[str, Any]],
                         item_vecs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Embeddings of each row's item, query and consultation history (padded, with masks)."""
        cfg, m = self.cfg, self.model
        ctxs = [self._user_context(r) for r in rows]
        B = len(rows)
        ih, ih_mask = self._pad([c[0] for c in ctxs], cfg.history_len)
        qh, qh_mask = self._pad([c[1] for c in ctxs], cfg.history_len)
        ch, ch_mask = self._pad([c[2] for c in ctxs], cfg.consultation_len)
        if item_vecs is not None:  # one query's precomputed item embeddings (scoring)
            ivec = item_vecs[ih]
        else:
            ivec = self._item_vecs(ih, e_q_ctx.repeat_interleave(ih.shape[1], 0))
        uq, inv = torch.unique(qh.reshape(-1), return_inverse=True)
        qvec = m.query_context(*self.query_states.take(uq))[1][inv].view(B, qh.shape[1], -1)
        uc, inv = torch.unique(ch.reshape(-1), return_inverse=True)
        s, k = self.chat_states.take(uc)
        cvec = m.consultations(s, k, e_q_ctx.repeat_interleave(ch.shape[1], 0), inv).view(B, ch.shape[1], -1)
        return {"ivec": ivec, "ih_mask": ih_mask, "qvec": qvec, "qh_mask": qh_mask, "cvec": cvec, "ch_mask": ch_mask}

    def _final_query(self, rows: list[dict[str, Any]], item_vecs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q_idx = torch.tensor([self.query_index[r["query"]] for r in rows])
        s, k = self.query_states.take(q_idx)
        q_ctx, e_q = self.model.query_context(s, k)
        h = self._history_vectors(q_ctx, rows, item_vecs)
        users = torch.tensor([self.catalog.users[r["user_id"]] for r in rows])
        M = self.model.personal(e_q, users, h["cvec"], h["ch_mask"], h["qvec"], h["qh_mask"], h["ivec"], h["ih_mask"])
        return M, q_ctx

    def _alignment_loss(self, rng: np.random.Generator) -> torch.Tensor:
        cfg, m = self.cfg, self.model
        pick = self.pairs[rng.choice(len(self.pairs), size=min(cfg.align_pairs, len(self.pairs)), replace=False)]
        w_idx, i_idx = torch.from_numpy(pick[:, 0]), torch.from_numpy(pick[:, 1])
        s, k = self.word_states.take(w_idx)
        e_w = nn.functional.normalize(m.query_context(s, k)[1], dim=-1)
        e_i = nn.functional.normalize(self._item_vecs(i_idx, None), dim=-1)
        sim = e_w @ e_i.T  # in-batch negatives: other pairs' items (row) and words (column)
        same_item = i_idx.unsqueeze(0) == i_idx.unsqueeze(1)
        same_word = w_idx.unsqueeze(0) == w_idx.unsqueeze(1)
        eye = torch.eye(len(pick), dtype=torch.bool)
        target = torch.arange(len(pick))
        # a duplicate of the positive is not a negative
        to_items = (sim / cfg.tau_item).masked_fill(same_item & ~eye, -1e9)
        to_words = (sim.T / cfg.tau_token).masked_fill(same_word & ~eye, -1e9)
        return 0.5 * nn.functional.cross_entropy(to_items, target) + 0.5 * nn.functional.cross_entropy(to_words, target)

    # -- Ranker --------------------------------------------------------------------------------------
    def fit(self, ds: Dataset, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        t_prep = time.time()
        self._prepare(ds, train)
        prep_seconds = time.time() - t_prep
        n_items = len(self.catalog.ids)
        self.model = MapsModel(cfg, self.lm_dim, len(self.catalog.users), n_items, len(self.categories))
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        item_p = np.bincount([self.catalog.index[r["product_id"]] for r in train], minlength=n_items) + 1.0
        item_p = item_p**0.75 / (item_p**0.75).sum()
        use_align = cfg.general_align and len(self.pairs) > 1

        def batch_loss(rows: list[dict[str, Any]]) -> torch.Tensor:
            M, q_ctx = self._final_query(rows)
            target = torch.tensor([self.catalog.index[r["product_id"]] for r in rows])
            neg = torch.from_numpy(rng.choice(n_items, size=(len(rows), cfg.negatives), p=item_p))
            cand = torch.cat([target.unsqueeze(1), neg], 1)  # (B, 1 + negatives)
            e_i = self._item_vecs(cand, q_ctx.repeat_interleave(cand.shape[1], 0))
            scores = torch.einsum("bd,bkd->bk", M, e_i)
            loss = nsl(scores[:, 0], scores[:, 1:])
            if use_align:
                loss = loss + cfg.align_weight * self._alignment_loss(rng)
            return loss

        log = fit_epochs(self.model, opt, train, epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience,
                         rng=rng, batch_loss=batch_loss, desc="maps epochs",
                         val_ndcg4=lambda: target_ndcg4(self.score, val, self.catalog.index) if val else 0.0)
        return log | {
            "lm": "all-MiniLM-L6-v2 (frozen)", "prepare_seconds": round(prep_seconds, 2),
            "alignment": {"words": len(self.words), "pairs": int(len(self.pairs)), "gamma": cfg.gamma},
            "consultations": len(self.chats), "mix": [round(float(x), 4) for x in self.model.mix.detach()],
            "config": asdict(cfg)}

    @torch.no_grad()
    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Full-catalogue scores; items are embedded once per distinct query (the cross experts read it)."""
        self.model.eval()
        out = np.zeros((len(rows), len(self.catalog.ids)), dtype=np.float32)
        by_query: dict[str, list[int]] = {}
        for j, r in enumerate(rows):
            by_query.setdefault(r["query"], []).append(j)
        all_items = torch.arange(len(self.catalog.ids))
        s_all, k_all = self.item_states.take(all_items)
        for query, js in by_query.items():
            q_idx = torch.tensor([self.query_index[query]])
            q_ctx, _ = self.model.query_context(*self.query_states.take(q_idx))
            E = self.model.items(s_all, k_all, all_items, self.item_cat, q_ctx.expand(len(all_items), -1))
            for start in range(0, len(js), 256):
                part = js[start : start + 256]
                M, _ = self._final_query([rows[j] for j in part], item_vecs=E)
                out[part] = (M @ E.T).numpy()
        return out

    def evaluate(self, rows: list[dict[str, Any]], k: int = 10) -> dict[str, Any]:
        return top_k_metrics(self.score(rows), self.catalog.ids, rows, k)

    def state(self) -> dict[str, Any]:
        return {"kind": "maps", "config": asdict(self.cfg), "products": self.catalog.ids, "users": self.catalog.users,
                "categories": self.categories, "queries": self.query_texts, "words": self.words,
                "state_dict": self.model.state_dict()}
