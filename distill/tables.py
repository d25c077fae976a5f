"""A bundle's features as the service reads them, and its student's inputs for held-out queries.

``BundleTables`` holds what ``hmpps publish`` writes to Redis, decoded as the
service decodes it: with a lean ``storage`` (float16, int8) the vectors are
round-tripped through ``contract.codec``, so offline checks see the service's
numbers, not the float32 files. ``held_out_lists`` builds the student's inputs for
a dataset's held-out test queries through the same ``build_inputs``; retraining
and the lean-feature parity check both score them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import keys
from contract.bundle import verify_bundle
from contract.codec import roundtrip
from contract.errors import InputError
from contract.signals import Listing
from contract.spec import FeatureSpec, build_inputs, concat_inputs
from training.artifacts import read_json, read_jsonl


class BundleTables:
    """A bundle's offline features and seeded histories, keyed and decoded as the service reads them."""

    def __init__(self, bundle: Path):
        self.dir = Path(bundle)
        self.manifest = verify_bundle(self.dir)
        self.spec: FeatureSpec = self.manifest.spec
        f = self.manifest.features
        index = read_json(self.dir / f["index"])
        self.products = roundtrip(np.load(self.dir / f["products"]), self.spec.storage)
        self.query_features = roundtrip(np.load(self.dir / f["queries"]), self.spec.storage)
        self._p = {p: i for i, p in enumerate(index["products"])}
        self._q = {keys.normalize_query(q): i for i, q in enumerate(index["queries"])}
        self.seeded = {r["user_id"]: r["history"] for r in read_jsonl(self.dir / f["histories"])}
        self.history_cap = self.manifest.history_cap
        self._encoder: Any = None

    def stored_as(self, storage: str) -> BundleTables:
        """The same bundle as the service would read it with the features stored as ``storage``."""
        view = copy.copy(self)
        view.spec = dataclasses.replace(self.spec, storage=storage)
        view.products = roundtrip(self.products, storage)
        view.query_features = roundtrip(self.query_features, storage)
        return view

    @property
    def product_ids(self) -> list[str]:
        return list(self._p)

    @property
    def queries(self) -> list[str]:
        """The known queries (normalized), those with offline features."""
        return list(self._q)

    def has(self, pid: str) -> bool:
        return pid in self._p

    def product(self, pids: list[str]) -> np.ndarray:
        if not pids:
            return np.zeros((0, self.spec.product_dim), np.float32)
        return self.products[[self._p[p] for p in pids]]

    def query(self, text: str) -> np.ndarray:
        i = self._q.get(keys.normalize_query(text))
        if i is not None:
            return self.query_features[i]
        if self._encoder is None:  # a tail query: the bundle's query encoder, as the service does
            from service.core.bundle import query_encoder

            self._encoder = query_encoder(self.dir, self.manifest)
        vec = np.asarray(self._encoder.encode(text), np.float32)
        return roundtrip(vec[None], self.spec.storage)[0]  # the service caches it in this storage


@dataclass
class HeldOutLists:
    """The held-out test queries' candidate lists (caller's order), purchases and student inputs."""

    lists: list[list[str]]
    targets: list[str]
    inputs: dict[str, np.ndarray]  # every list's rows, concatenated in list order

    def per_query(self, probs: np.ndarray) -> np.ndarray:
        """NDCG@4 per query of the lists reranked by ``probs`` (one per input row)."""
        from training.metrics import per_query, rerank

        ranked, at = [], 0
        for pids in self.lists:
            ranked.append(rerank(pids, list(probs[at:at + len(pids)])))
            at += len(pids)
        return per_query(ranked, self.targets)


def held_out_lists(tables: BundleTables, data: Path, first_stage: Path, split: str = "test") -> HeldOutLists:
    """The student's inputs for ``data``'s test queries (or another split's) and ``first_stage``'s candidates,
    built from the bundle's features as the service builds them."""
    from training.candidates import load_first_stage
    from training.dataset import load_dataset

    ds = load_dataset(data)
    if ds.fingerprint != tables.manifest.dataset_fingerprint:
        raise InputError(f"{data} is not the dataset bundle {tables.manifest.version} was built from")
    fs = load_first_stage(first_stage, ds)
    rows = [r for r in ds.queries(split) if r["query_id"] in fs.rows]
    if not rows:
        raise InputError(f"{first_stage}: no candidates for the {split} queries of {data}")
    lists, parts, targets = [], [], []
    for row in rows:
        cands = [c for c in fs.rows[row["query_id"]]["candidates"] if tables.has(c["product_id"])]
        pids = [c["product_id"] for c in cands]
        hist = [p for p in ds.history(row) if tables.has(p)][-tables.history_cap:]
        listing = Listing(np.arange(len(pids)), len(pids), np.array([c.get("score", np.nan) for c in cands], float),
                          pids, hist) if tables.spec.signals else None
        parts.append(build_inputs(tables.spec, tables.query(row["query"]), tables.product(pids), tables.product(hist),
                                  listing=listing))
        lists.append(pids)
        targets.append(row["product_id"])  # the purchase
    return HeldOutLists(lists, targets, concat_inputs(parts))
