"""The normalized dataset directory every later stage reads.

Layout::

    DIR/dataset.json        name, source formats, fingerprint, parameters
    DIR/products.jsonl      one product per line (cleaned and raw text, image)
    DIR/interactions.jsonl  one purchase per line, chronological per user, with its
                            HEM query and split ("train"/"test")
    DIR/images/             product images, when the source has files (synthetic)
    DIR/consultations.jsonl pre-search chats (user_id, timestamp, text), synthetic data only
    DIR/stats.json, stats.md

A query instance is a purchase with a query: ``query_id`` names it, ``query``
is its text and ``product_id`` its target. The user's history for it is every
earlier purchase of that user (train and test alike), newest last.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifacts import SCHEMA_VERSION, read_json, read_jsonl
from training.errors import ArtifactMismatch, InputError


@dataclass
class Dataset:
    root: Path
    meta: dict[str, Any]
    products: dict[str, dict[str, Any]]
    interactions: list[dict[str, Any]]
    _by_user: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    def by_user(self) -> dict[str, list[dict[str, Any]]]:
        """Purchases per user in chronological order."""
        if not self._by_user:
            grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in self.interactions:
                grouped[row["user_id"]].append(row)
            self._by_user = dict(grouped)
        return self._by_user

    def queries(self, split: str | None = None) -> list[dict[str, Any]]:
        """Purchases that carry a query, optionally of one split."""
        return [r for r in self.interactions if r.get("query") and (split is None or r["split"] == split)]

    def history(self, row: dict[str, Any]) -> list[str]:
        """Product ids the user bought before this purchase, oldest first."""
        seq = self.by_user()[row["user_id"]]
        return [r["product_id"] for r in seq[: row["seq"]]]

    def consultations(self) -> dict[str, list[dict[str, Any]]]:
        """Pre-search chats per user (``consultations.jsonl``, synthetic data only), oldest first; {} if absent."""
        path = self.root / "consultations.jsonl"
        if not path.exists():
            return {}
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in read_jsonl(path):
            grouped[c["user_id"]].append(c)
        return {u: sorted(cs, key=lambda c: c["timestamp"]) for u, cs in grouped.items()}

    def image_path(self, product_id: str) -> Path | None:
        rel = self.products.get(product_id, {}).get("image")
        return self.root / rel if rel else None


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset directory not found: {root} (build one with 'hmpps data amazon' or 'hmpps data synthetic')")
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise InputError(f"{root} is not a dataset directory: dataset.json is missing")
    meta = read_json(meta_path)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactMismatch(
            f"{root} has dataset schema {meta.get('schema_version')}, this code reads schema {SCHEMA_VERSION}; rebuild it"
        )
    products = {p["product_id"]: p for p in read_jsonl(root / "products.jsonl")}
    interactions = read_jsonl(root / "interactions.jsonl")
    if not interactions:
        raise InputError(f"{root}/interactions.jsonl holds no interactions")
    return Dataset(root, meta, products, interactions)
