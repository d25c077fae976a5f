"""Realistic /rerank bodies: real users, their real queries, and candidates from the catalog.

Each body takes a (user, query) pair from the bundle's histories and known
queries and K candidates from its catalog, so Redis lookups, history
selection and the model all do the work real traffic makes them do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError


class RequestMix:
    def __init__(self, bundle: Path, k: int = 10, seed: int = 0, tail_share: float = 0.0):
        bundle = Path(bundle)
        try:
            index = json.loads((bundle / "features" / "index.json").read_text())
            self.products: list[str] = index["products"]
            self.queries: list[str] = index["queries"]
            with open(bundle / "features" / "histories.jsonl", encoding="utf-8") as f:
                self.users = [row["user_id"] for row in map(json.loads, f) if row["history"]]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"cannot draw requests from {bundle}: {e}") from None
        if not self.products or not self.queries or not self.users:
            raise InputError(f"bundle {bundle} has no products, queries or users with history to draw requests from")
        self.k = min(k, len(self.products))
        self.tail_share = tail_share
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def body(self) -> dict[str, Any]:
        self.n += 1
        rng = self.rng
        query = self.queries[int(rng.integers(len(self.queries)))]
        if self.tail_share and rng.random() < self.tail_share:
            query = f"{query} {int(rng.integers(1_000_000))}"  # unseen text: exercises the query encoder
        picks = rng.choice(len(self.products), size=self.k, replace=False)
        return {
            "request_id": f"lt-{self.n}",
            "user_id": self.users[int(rng.integers(len(self.users)))],
            "query": query,
            "candidates": [{"product_id": self.products[int(i)], "score": round(float(self.k - r), 3)}
                           for r, i in enumerate(picks)],
        }
