"""``hmpps encode``: a catalogue's product features in batch, in one process or on Ray Data.

The bundle's product encoder (MiniLM-L6 text + the image tower + projection, in
ONNX) turns each product of an own-data products file into its features, in the
bundle's layout (popularity and co-purchase slices zero, as for any product the
training interactions never saw). The output is a directory of shards
(``contract.shards``) that ``hmpps publish --features`` streams into Redis.

With ``--ray``, the same ``EncodeBatch`` runs as a Ray Data ``map_batches`` job
on an actor pool: each actor opens the ONNX session once and encodes many
batches. Without it (or without Ray installed: ``pip install .[scale]``), the
same class encodes the batches in this process. Both write the same shards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contract.bundle import verify_bundle
from contract.errors import InputError
from contract.products import product_row
from contract.reports import write_json
from contract.shards import FORMAT, INDEX, Shard, write_shard
from training.artifacts import atomic_dir
from training.raydata import ray_init


class EncodeBatch:
    """Product rows -> features. A Ray Data callable class: the model loads once per actor."""

    def __init__(self, bundle: str):
        from service.core.bundle import product_encoder

        self.encoder = product_encoder(Path(bundle), verify_bundle(Path(bundle)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [(str(t), Path(str(i)) if str(i) else None) for t, i in zip(batch["text"], batch["image"], strict=True)]
        return {"product_id": batch["product_id"], "features": self.encoder.encode(items), "hash": batch["hash"],
                "updated_at": batch["updated_at"], "summary": batch["summary"]}


def product_rows(products: Path, now: float | None = None) -> list[dict[str, Any]]:
    """What the encoder reads per product, from an own-data products file (images relative to it)."""
    from training.owndata import read_product_records

    records, report = read_product_records(products)
    if not records:
        raise InputError(f"{products}: no valid product ({report.malformed} malformed lines)")
    now = time.time() if now is None else now
    base = Path(products).resolve().parent
    rows = []
    for r in (product_row(p, base, now) for p in records):
        rows.append({"product_id": r.product_id, "text": r.text,
                     "image": str(r.image) if r.image is not None and r.image.is_file() else "",
                     "hash": r.hash, "updated_at": r.updated_at, "summary": r.summary})
    return rows


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def _batches_local(bundle: Path, rows: list[dict[str, Any]], batch_size: int) -> Any:
    enc = EncodeBatch(str(bundle))
    for start in tqdm(range(0, len(rows), batch_size), desc="encoding products", unit="batch"):
        yield enc(_columns(rows[start:start + batch_size]))


def _batches_ray(bundle: Path, rows: list[dict[str, Any]], batch_size: int, address: str, actors: int | None) -> Any:
    ray = ray_init(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards in the file's order, whatever finishes first
    n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items(rows).map_batches(EncodeBatch, fn_constructor_args=(str(bundle),), batch_size=batch_size,
                                              batch_format="numpy", concurrency=n, num_cpus=1)
    yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy")


def encode_products(bundle: Path, products: Path, out: Path, ray: str | None = None, shard_size: int = 10_000,
                    batch_size: int = 64, actors: int | None = None) -> dict[str, Any]:
    """Encode every product of ``products`` with ``bundle``'s encoder into shards under ``out`` (atomically)."""
    if shard_size < 1 or batch_size < 1:
        raise InputError("--shard-size and --batch-size must be at least 1")
    m = verify_bundle(bundle)
    rows = product_rows(products)
    t0 = time.perf_counter()
    shards: list[dict[str, Any]] = []
    pending: list[dict[str, np.ndarray]] = []
    with atomic_dir(out) as tmp:

        def flush() -> None:
            if not pending:
                return
            cat = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            name = f"shard-{len(shards):05d}.npz"
            write_shard(tmp / name, Shard([str(x) for x in cat["product_id"]], cat["features"].astype(np.float32),
                                          [str(x) for x in cat["hash"]], cat["updated_at"].astype(np.float64),
                                          [str(x) for x in cat["summary"]]))
            shards.append({"file": name, "rows": int(len(cat["product_id"]))})
            pending.clear()

        batches = _batches_ray(bundle, rows, batch_size, ray, actors) if ray else _batches_local(bundle, rows, batch_size)
        for b in batches:
            if b["features"].shape[1:] != (m.spec.product_dim,):
                raise InputError(f"the product encoder returned {b['features'].shape[1:]} columns, the spec wants "
                                 f"{m.spec.product_dim}")
            pending.append(b)
            if sum(len(x["product_id"]) for x in pending) >= shard_size:
                flush()
        flush()
        seconds = time.perf_counter() - t0
        info = {"format": FORMAT, "bundle_version": m.version, "product_dim": m.spec.product_dim,
                "products": sum(s["rows"] for s in shards), "shards": shards, "engine": f"ray ({ray})" if ray else
                "one process", "seconds": round(seconds, 2), "products_per_s": round(len(rows) / max(seconds, 1e-9), 1)}
        write_json(tmp / INDEX, info)
    return info
