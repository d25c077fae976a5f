"""Non-learned baselines: BM25 over product text, and popularity."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.dataset import Dataset
from training.first_stage.base import Catalog
from training.text import content_terms

# Ties are broken by popularity, then by id; the epsilon keeps them below any real score gap.
_TIE_EPS = 1e-6


@dataclass
class BM25Config:
    k1: float = 1.2
    b: float = 0.75


class BM25Ranker:
    name = "bm25"

    def __init__(self, catalog: Catalog, cfg: BM25Config):
        self.catalog, self.cfg = catalog, cfg

    def fit(self, ds: Dataset, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
        docs = self.catalog.product_terms
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, terms in enumerate(docs):
            for t, tf in Counter(terms).items():
                self.postings[t].append((i, tf))
        self.lengths = np.array([len(d) for d in docs], dtype=np.float64)
        self.avg_len = float(self.lengths.mean()) if len(docs) else 0.0
        n = len(docs)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}
        pop = self.catalog.popularity
        self.tiebreak = _TIE_EPS * pop / max(1.0, pop.max())
        return {"vocabulary": len(self.postings), "avg_doc_terms": round(self.avg_len, 1)}

    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        k1, b = self.cfg.k1, self.cfg.b
        norm = k1 * (1 - b + b * self.lengths / max(self.avg_len, 1e-9))
        out = np.tile(self.tiebreak, (len(rows), 1))
        for r, row in enumerate(rows):
            for t in content_terms(row["query"]):
                for i, tf in self.postings.get(t, ()):
                    out[r, i] += self.idf[t] * tf * (k1 + 1) / (tf + norm[i])
        return out


@dataclass
class PopConfig:
    pass


class PopRanker:
    """Global MostPop: products ranked by train purchases, the same list for every query."""

    name = "pop"

    def __init__(self, catalog: Catalog, cfg: PopConfig):
        self.catalog = catalog

    def fit(self, ds: Dataset, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
        self.pop = np.zeros(len(self.catalog.ids))
        for r in train + val:
            self.pop[self.catalog.index[r["product_id"]]] += 1
        return {"products_with_purchases": int((self.pop > 0).sum())}

    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return np.tile(self.pop, (len(rows), 1))
