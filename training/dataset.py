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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from contract.errors import ArtifactMismatch, InputError
from training.artifacts import SCHEMA_VERSION, read_json, read_jsonl, require_same_dataset


@dataclass
class Dataset:
    root: Path
    meta: dict[str, Any]
    products: dict[str, dict[str, Any]]
    interactions: list[dict[str, Any]]
    # set by ``with_summaries``: {"dir", "mode", "products"} of the summarize run whose text products carry
    summaries: dict[str, Any] | None = None
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


def as_dataset(data: Dataset | str | Path) -> Dataset:
    """A stage takes a loaded dataset (the pipeline loads it once) or a directory (its own command)."""
    return data if isinstance(data, Dataset) else load_dataset(data)


def with_summaries(ds: Dataset, summaries_dir: str | Path | None) -> Dataset:
    """A copy of ``ds`` whose products carry ``summary`` from a summarize run (used instead of the description).

    ``ds`` itself is not changed, so applying summaries twice cannot happen by accident.
    """
    if summaries_dir is None:
        return ds
    if ds.summaries is not None:
        if Path(ds.summaries["dir"]) == Path(summaries_dir):
            return ds
        raise InputError(f"dataset already carries the summaries of {ds.summaries['dir']}, not {summaries_dir}")
    summaries_dir = Path(summaries_dir)
    info = read_json(summaries_dir / "summarize.json")
    require_same_dataset(ds.fingerprint, info["dataset_fingerprint"], f"summaries in {summaries_dir}")
    products = dict(ds.products)
    n = 0
    for row in read_jsonl(summaries_dir / "summaries.jsonl"):
        if row["product_id"] in products and row.get("summary"):
            products[row["product_id"]] = products[row["product_id"]] | {"summary": row["summary"]}
            n += 1
    return replace(ds, products=products, summaries={"dir": str(summaries_dir), "mode": info.get("mode"), "products": n})
