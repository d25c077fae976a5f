"""``hmpps publish``: a bundle's features into Redis, under the bundle's version namespace,
and its users' histories into the live histories (user data, outside any version).

It lives in the contract because both sides run it: ``hmpps publish`` offline (and in the
serving image, docker/seed.sh), and the service itself for its embedded default.

Writes are pipelined in chunks. The ``complete`` marker is written last, and
``--activate`` flips the live alias only after it, so readers never see half
a catalog. Publishing the same bundle again rewrites the same keys with the
same values (idempotent); a namespace that holds another dataset is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import keys
from contract.bundle import verify_bundle
from contract.codec import encode_vector
from contract.constants import HISTORY_TTL_S
from contract.errors import ArtifactMismatch, InputError
from contract.histories import seed_histories
from contract.redis_client import SyncRedis

CHUNK = 1000


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class PublishCounts:
    products: int
    summaries: int
    queries: int
    users: int  # histories seeded (merged into the live ones)


@dataclass(frozen=True)
class Published:
    """What ``publish`` wrote: the version, its counts, whether the live alias now points at it."""

    version: str
    counts: PublishCounts
    activated: bool
    seconds: float


def publish(bundle: Path, client: SyncRedis, activate: bool = False, data_fingerprint: str | None = None,
            history_ttl_s: int = HISTORY_TTL_S) -> Published:
    """Write the bundle's features to Redis and seed its users' histories; return counts and seconds."""
    t0 = time.perf_counter()
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    version = manifest.version
    if data_fingerprint is not None and data_fingerprint != manifest.dataset_fingerprint:
        raise ArtifactMismatch(f"bundle {bundle} was built from dataset {manifest.dataset_fingerprint}, "
                               f"not from the given data ({data_fingerprint})")
    existing = client.get(keys.manifest(version))
    if existing is not None:
        prev = json.loads(existing)
        if prev.get("dataset_fingerprint") != manifest.dataset_fingerprint:
            raise ArtifactMismatch(f"Redis already holds version {version} for dataset {prev.get('dataset_fingerprint')}; "
                                   "refusing to mix catalogs")
    feats = manifest.features
    spec = manifest.spec
    index = json.loads((bundle / feats["index"]).read_text())
    products = np.load(bundle / feats["products"])
    queries = np.load(bundle / feats["queries"])
    if products.shape != (len(index["products"]), spec.product_dim):
        raise InputError(f"bundle {bundle}: products.npy has shape {products.shape}, expected "
                         f"({len(index['products'])}, {spec.product_dim})")
    if queries.shape != (len(index["queries"]), spec.query_dim):
        raise InputError(f"bundle {bundle}: queries.npy has shape {queries.shape}")
    summaries = _jsonl(bundle / feats["summaries"])
    histories = _jsonl(bundle / feats["histories"])
    cap = manifest.history_cap

    counts = {"products": 0, "summaries": 0, "queries": 0, "users": 0}
    pipe = client.pipeline(transaction=False)
    pending = 0

    def flush(force: bool = False) -> None:
        nonlocal pipe, pending
        if pending and (force or pending >= CHUNK):
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            pending = 0

    def vec_bytes(v: np.ndarray) -> bytes:
        return encode_vector(v, spec.storage)

    client.delete(keys.complete(version))  # a rerun is incomplete until it finishes
    pipe.set(keys.manifest(version), json.dumps(manifest.to_dict()))
    plain_keys = (
        ("products", ((keys.product(version, pid), vec_bytes(v)) for pid, v in zip(index["products"], products, strict=True))),
        ("summaries", ((keys.summary(version, r["product_id"]), r["summary"]) for r in summaries)),
        ("queries", ((keys.query(version, q), vec_bytes(v)) for q, v in zip(index["queries"], queries, strict=True))),
    )
    for kind, pairs in plain_keys:
        for key, value in pairs:
            pipe.set(key, value)
            counts[kind] += 1
            pending += 1
            flush()
    flush(force=True)
    # user data, outside the version: merged, never overwriting newer actions
    counts["users"] = seed_histories(client, histories, cap, history_ttl_s)
    client.set(keys.complete(version), json.dumps({"counts": counts, "published_at": time.time()}))
    if activate:
        client.set(keys.ALIAS, version)
    return Published(version, PublishCounts(**counts), activate, round(time.perf_counter() - t0, 3))
