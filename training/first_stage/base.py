"""The seam every first-stage retriever implements, and what they share."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from training.dataset import Dataset
from training.text import content_terms


class Ranker(Protocol):
    """Scores every catalogue product for a batch of query instances."""

    name: str

    def fit(self, ds: Dataset, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
        """Train (or index) on ``train``, early-stop on ``val``; return a training log."""
        ...

    def score(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Scores of shape (len(rows), n_products), columns in ``Catalog.ids`` order."""
        ...


@dataclass
class Catalog:
    """Integer ids for products and users, and per-product terms."""

    ids: list[str]
    index: dict[str, int]
    users: dict[str, int]
    product_terms: list[list[str]]
    popularity: np.ndarray  # train purchases per product

    @classmethod
    def build(cls, ds: Dataset, max_description_terms: int = 40) -> Catalog:
        ids = sorted(ds.products)
        index = {pid: i for i, pid in enumerate(ids)}
        users = {u: i for i, u in enumerate(sorted(ds.by_user()))}
        product_terms = []
        for pid in ids:
            p = ds.products[pid]
            head = " ".join([p["title"], p["brand"], " ".join(p["category"])])
            desc = p["description"].split()[: max_description_terms * 2]
            product_terms.append(content_terms(head + " " + " ".join(desc)))
        pop = np.zeros(len(ids), dtype=np.float64)
        for r in ds.interactions:
            if r["split"] == "train":
                pop[index[r["product_id"]]] += 1
        return cls(ids, index, users, product_terms, pop)


class Vocab:
    """Word ids for queries and product text; 0 is padding, 1 is unknown."""

    def __init__(self, texts: list[list[str]], min_count: int = 1):
        counts = Counter(t for terms in texts for t in terms)
        self.words = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= min_count)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.counts = np.array([0, 0] + [counts[w] for w in self.words[2:]], dtype=np.float64)

    @classmethod
    def from_words(cls, words: list[str]) -> Vocab:
        """A saved vocabulary (``words`` in id order); the counts, used by training only, are not kept."""
        vocab = cls([])
        vocab.words, vocab.index = list(words), {w: i for i, w in enumerate(words)}
        vocab.counts = np.zeros(len(words))
        return vocab

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, terms: list[str], max_len: int) -> list[int]:
        ids = [self.index.get(t, 1) for t in terms[:max_len]]
        return ids + [0] * (max_len - len(ids))


VAL_MAX = 3000


def split_validation(train: list[dict[str, Any]], fraction: float, seed: int, max_queries: int = VAL_MAX
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out the last train purchase of a random ``fraction`` of users (those with 2+), at most
    ``max_queries`` of them: early stopping needs a stable estimate, not a share that grows with the shop
    (scoring it against the catalogue after every epoch would then grow as users x products)."""
    rng = np.random.default_rng(seed)
    last: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for r in train:
        counts[r["user_id"]] += 1
        if r["user_id"] not in last or r["seq"] > last[r["user_id"]]["seq"]:
            last[r["user_id"]] = r
    eligible = sorted(u for u, c in counts.items() if c >= 2)
    n_val = min(max_queries, max(1, int(round(fraction * len(eligible))))) if eligible else 0
    chosen = set(rng.choice(eligible, size=n_val, replace=False).tolist()) if n_val else set()
    val_ids = {last[u]["query_id"] for u in chosen}
    return [r for r in train if r["query_id"] not in val_ids], [r for r in train if r["query_id"] in val_ids]
