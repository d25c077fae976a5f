"""``hmpps bundle lean``: the same bundle with its features stored as float16 or int8 in Redis.

The model still reads float32 (the service widens on decode); only the bytes in
Redis change, which is what memory per product and the request's transfer
scale with. A lean bundle is a new version (its storage is part of the
version's name), so its keys never mix with the float32 ones.

Parity is checked before the bundle is written, with the bundle's own student:
- on sampled requests (every seeded user, a random known query, 10 random
  candidates): the max abs difference of P(yes);
- with ``--data`` and ``--candidates``: the held-out test queries, as
  ``hmpps retrain`` evaluates them, with NDCG@4 for both storages and the
  paired bootstrap interval of the difference.
The result is kept in the manifest (``lean``) and printed as a table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from contract.bundle import MANIFEST, write_manifest
from contract.codec import STORAGES, vector_bytes
from contract.errors import InputError
from contract.reports import markdown_table
from contract.signals import Listing
from contract.spec import build_inputs, concat_inputs, yes_probability
from distill.export import onnx_logits
from distill.tables import BundleTables, held_out_lists
from training.artifacts import atomic_dir

SAMPLED_REQUESTS = 500
SAMPLED_CANDIDATES = 10


def sampled_inputs(tables: BundleTables, seed: int = 0) -> dict[str, np.ndarray]:
    """Requests the bundle can answer: seeded users, known queries, random candidates."""
    rng = np.random.default_rng(seed)
    users = sorted(tables.seeded)[:SAMPLED_REQUESTS]
    pids = sorted(tables.product_ids)
    queries = sorted(tables.queries)
    if not users or not pids or not queries:
        raise InputError(f"{tables.dir}: no seeded users, products or queries to sample requests from")
    parts = []
    for user in users:
        cands = [pids[i] for i in rng.choice(len(pids), size=min(SAMPLED_CANDIDATES, len(pids)), replace=False)]
        hist = [p for p in tables.seeded[user] if tables.has(p)][: tables.history_cap][::-1]
        listing = Listing.in_order(cands, hist) if tables.spec.signals else None
        parts.append(build_inputs(tables.spec, tables.query(queries[rng.integers(len(queries))]),
                                  tables.product(cands), tables.product(hist), listing=listing))
    return concat_inputs(parts)


def _selection_changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    """Per pair: a rounding that reorders two near-equal similarities picked another history item (Eq. 6),
    a discrete change, counted apart from the rounding noise."""
    n = len(a["history"])
    return np.asarray(np.abs(a["history"] - b["history"]).reshape(n, -1).max(1) > 1e-2) if n else np.zeros(0, bool)


def parity(tables: BundleTables, storage: str, data: Path | None = None,
           first_stage: Path | None = None) -> dict[str, Any]:
    """How the bundle's student scores change when its features are stored as ``storage``."""
    lean = tables.stored_as(storage)
    student = tables.dir / tables.manifest.student_file()
    spec = tables.spec
    out: dict[str, Any] = {"storage": storage, "from": tables.spec.storage,
                           "bytes_per_product": {tables.spec.storage: vector_bytes(spec.product_dim, spec.storage),
                                                 storage: vector_bytes(spec.product_dim, storage)},
                           "bytes_per_query": {tables.spec.storage: vector_bytes(spec.query_dim, spec.storage),
                                               storage: vector_bytes(spec.query_dim, storage)}}
    ia, ib = sampled_inputs(tables), sampled_inputs(lean)
    a, b = yes_probability(onnx_logits(student, ia)), yes_probability(onnx_logits(student, ib))
    diff = np.abs(a - b)
    same = ~_selection_changed(ia, ib)
    # the rounding noise on the pairs that see the same history items; a flipped near-tie (Eq. 6) apart
    out["sampled"] = {"pairs": int(len(a)), "max_abs_p_yes": float(diff[same].max()) if same.any() else 0.0,
                      "mean_abs_p_yes": float(diff.mean()), "selection_changed": int((~same).sum()),
                      "max_abs_p_yes_all": float(diff.max())}
    if data is not None and first_stage is not None:
        from training.metrics import paired_values_bootstrap

        full, small = held_out_lists(tables, data, first_stage), held_out_lists(lean, data, first_stage)
        pa = yes_probability(onnx_logits(student, full.inputs))
        pb = yes_probability(onnx_logits(student, small.inputs))
        na, nb = full.per_query(pa), small.per_query(pb)
        diff = np.abs(pa - pb)
        moved = _selection_changed(full.inputs, small.inputs)
        out["held_out"] = {"queries": len(full.lists), "pairs": int(len(pa)),
                           "max_abs_p_yes": float(diff.max()), "p99_abs_p_yes": float(np.quantile(diff, 0.99)),
                           "pairs_over_0.01": int((diff > 0.01).sum()), "selection_changed": int(moved.sum()),
                           "NDCG@4": {tables.spec.storage: float(na.mean()), storage: float(nb.mean())},
                           "changed_rankings": int(sum(
                               (x != y) for x, y in zip(na.tolist(), nb.tolist(), strict=True))),
                           "paired": paired_values_bootstrap(nb, na)}
    return out


def report(info: dict[str, Any]) -> str:
    s, f = info["storage"], info["from"]
    sm = info["sampled"]
    rows = [["bytes per product vector", info["bytes_per_product"][f], info["bytes_per_product"][s]],
            ["bytes per query vector", info["bytes_per_query"][f], info["bytes_per_query"][s]],
            [f"max abs P(yes) difference, {sm['pairs']} sampled pairs (same selected history)", "",
             f"{sm['max_abs_p_yes']:.2e}"],
            ["sampled pairs whose selected history items changed (Eq. 6 near-ties)", "",
             f"{sm['selection_changed']} (max abs P(yes) difference with them {sm['max_abs_p_yes_all']:.2e})"]]
    if "held_out" in info:
        h = info["held_out"]
        p = h["paired"]
        rows += [[f"max abs P(yes) difference, {h['pairs']} held-out pairs", "", f"{h['max_abs_p_yes']:.2e}"],
                 ["99th percentile of the abs P(yes) difference", "", f"{h['p99_abs_p_yes']:.2e}"],
                 ["pairs whose P(yes) moved more than 0.01", "", str(h["pairs_over_0.01"])],
                 ["pairs whose selected history items changed (Eq. 6 near-ties)", "", str(h["selection_changed"])],
                 [f"NDCG@4, {h['queries']} held-out queries", f"{h['NDCG@4'][f]:.4f}", f"{h['NDCG@4'][s]:.4f}"],
                 [f"{s} - {f} NDCG@4 (paired 95% interval)", "",
                  f"{p['diff']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"],
                 ["queries whose NDCG@4 changed", "", str(h["changed_rankings"])]]
    return markdown_table(["", f, s], rows)


def lean_bundle(bundle: Path, storage: str, out: Path, data: Path | None = None,
                first_stage: Path | None = None) -> tuple[str, dict[str, Any]]:
    """Write ``bundle`` with ``storage`` to ``out`` (atomically); return its version and the parity info."""
    if storage not in STORAGES:
        raise InputError(f"--storage {storage!r}: must be one of {', '.join(STORAGES)}")
    if (data is None) != (first_stage is None):
        raise InputError("--data and --candidates go together (the held-out queries and their candidate lists)")
    tables = BundleTables(bundle)
    if tables.spec.storage == storage:
        raise InputError(f"{bundle} already stores its features as {storage}")
    if tables.spec.storage != "float32":
        raise InputError(f"{bundle} stores {tables.spec.storage}; make lean bundles from a float32 one")
    if Path(out).resolve() == Path(bundle).resolve():
        raise InputError("--out must differ from --bundle")
    info = parity(tables, storage, data, first_stage)
    old = tables.manifest
    with atomic_dir(out) as tmp:
        shutil.copytree(tables.dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))
        extra = dict(old.extra) | {"lean": info | {"lean_from": old.version}}
        prefix = old.version.rsplit("-", 1)[0]
        made = write_manifest(tmp, prefix, old.dataset, old.dataset_fingerprint,
                              tables.stored_as(storage).spec, old.models, old.features, extra)
    return made.version, info
