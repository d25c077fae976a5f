"""New and changed products into a live bundle version, without retraining.

The bundle's product encoder (``service.core.bundle.OnnxProductEncoder``) computes
their features by the offline recipe. Only changed products are written (a
content hash per product), each atomically with its summary and a record of
the upsert, behind a per-product timestamp guard; encoding happens before any
write, so a failure leaves the previous features intact.
Used by ``hmpps publish --products`` and ``POST /admin/products``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contract import keys
from contract.codec import encode_vector
from contract.errors import BundleError, InputError, NotPublished, Unprocessable
from contract.events import Product
from contract.products import product_row
from contract.redis_client import SyncRedis
from service.core.bundle import LoadedBundle, no_product_encoder

# KEYS: product meta hash, product features, summary: one product's keys, one hash-tagged slot
# ARGV: content hash, updated_at, features, summary
# returns 1 written, 0 unchanged, -1 stale (a newer record was applied)
UPSERT = """
local old = redis.call('HMGET', KEYS[1], 'hash', 'ts')
if old[1] == ARGV[1] then return 0 end
if old[2] and tonumber(old[2]) > tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'ts', ARGV[2], 'source', 'encoded')
return 1
"""
# KEYS: the version's upserted_at; ARGV: a time. Keeps the newest (its own slot, so its own script).
NEWEST = """
local at = redis.call('GET', KEYS[1])
if not at or tonumber(at) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass
class UpsertResult:
    written: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"seconds": round(self.seconds, 3)}

    def add(self, other: UpsertResult) -> None:
        """Count another write's outcomes into this one."""
        self.written += other.written
        self.unchanged += other.unchanged
        self.stale += other.stale
        self.deleted += other.deleted


def images_under(products: list[Product], root: Path | None, max_bytes: int) -> list[Product]:
    """Products sent over HTTP may name an image only as a file inside ``root`` (``HMPPS_IMAGE_DIR``), of at
    most ``max_bytes``; each comes back with its image resolved. The error is the same whether a path is
    outside ``root`` or missing inside it, so that a caller cannot probe which files exist on the host."""
    out = []
    for p in products:
        if p.image is None:
            out.append(p)
            continue
        if root is None:
            raise Unprocessable(f"product {p.product_id}: images are not accepted over HTTP by this service "
                                "(its operator sets HMPPS_IMAGE_DIR to allow them)")
        base = root.resolve()
        path = (base / p.image).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise Unprocessable(f"product {p.product_id}: image {p.image!r} is not a file of the image directory "
                                "(give a path relative to it)")
        if path.stat().st_size > max_bytes:
            raise Unprocessable(f"product {p.product_id}: image {p.image!r} is over {max_bytes} bytes")
        out.append(replace(p, image=str(path)))
    return out


def require_published(client: SyncRedis, version: str) -> None:
    """Upserts go into a published version only. Before publish, a written vector would be overwritten by
    publish while its stored hash survived, so a later upsert of the same content would be skipped."""
    if not client.exists(keys.complete(version)):
        raise NotPublished(f"version {version} is not published in this store: run 'hmpps publish --bundle "
                           f"BUNDLE' for it first (upserts go into a published version only)")


def upsert_products(client: SyncRedis, bundle: LoadedBundle, products: list[Product], base: Path | None = None,
                    prune: bool = False, now: float | None = None) -> UpsertResult:
    """Encode and write the changed products into ``bundle``'s version (sync client; runs in a thread)."""
    t0 = time.perf_counter()
    require_published(client, bundle.version)
    if bundle.product_encoder is None:
        raise no_product_encoder(bundle.version)
    version, now = bundle.version, time.time() if now is None else now  # one upsert time for the batch
    recipe = [product_row(p, base, now) for p in products]
    stored = client.pipeline(transaction=False)
    for p in products:
        stored.hget(keys.product_meta(version, p.product_id), "hash")
    known = [keys.as_text(h) for h in stored.execute()] if products else []
    out = UpsertResult()
    todo = [r for r, k in zip(recipe, known, strict=True) if r.hash != k]
    out.unchanged = len(products) - len(todo)
    try:  # a missing or unreadable image fails here, naming it, before anything is written
        features = bundle.product_encoder.encode([(r.text, r.image) for r in todo])
    except (OSError, ValueError) as e:
        raise InputError(f"could not encode the products, nothing was written: {type(e).__name__}: {e}") from None
    if todo and features.shape != (len(todo), bundle.spec.product_dim):
        raise BundleError(f"the product encoder returned shape {features.shape}, the spec wants "
                          f"({len(todo)}, {bundle.spec.product_dim})")
    rows: list[EncodedRow] = [(r.product_id, r.hash, r.updated_at, encode_vector(vec, bundle.spec.storage), r.summary)
                              for r, vec in zip(todo, features, strict=True)]
    out.add(write_encoded(client, version, rows))
    if prune:
        out.deleted = _prune(client, version, {p.product_id for p in products})
    out.seconds = time.perf_counter() - t0
    return out


EncodedRow = tuple[str, str, float, bytes, str]  # product id, content hash, updated_at, stored vector, summary


def write_encoded(client: SyncRedis, version: str, rows: list[EncodedRow], mark_newest: bool = True) -> UpsertResult:
    """Upsert already-encoded products into ``version``: one pipeline of UPSERT scripts (idempotent: an
    unchanged hash writes nothing, an older record never replaces a newer one), then the version's
    newest write time."""
    out = UpsertResult()
    # EVAL with the script text, through execute_command: redis-py's cluster pipeline has no eval()
    # (nor EVALSHA), but routes a raw EVAL by its keys; the same call works on one Redis
    pipe = client.pipeline(transaction=False)
    for pid, digest, ts, vec, summary in rows:
        pipe.execute_command("EVAL", UPSERT, 3, keys.product_meta(version, pid), keys.product(version, pid),
                             keys.summary(version, pid), digest, ts, vec, summary)
    codes = pipe.execute() if rows else []
    for code in codes:
        out.written += code == 1
        out.unchanged += code == 0
        out.stale += code == -1
    written_at = [r[2] for r, code in zip(rows, codes, strict=True) if code == 1]
    if written_at and mark_newest:  # after the products, so a reader never sees the time before the features
        mark_upserted(client, version, max(written_at))
    return out


def mark_upserted(client: SyncRedis, version: str, at: float) -> None:
    client.eval(NEWEST, 1, keys.upserted_at(version), at)


def _prune(client: SyncRedis, version: str, keep: set[str]) -> int:
    """Delete the features, summaries and upsert records of this version's products absent from ``keep``."""
    prefix, suffix = keys.split_key(keys.product(version, ""))
    ids = (k[len(prefix):len(k) - len(suffix)]
           for k in (keys.as_text(x) for x in client.scan_iter(match=f"{prefix}*", count=1000)))
    gone = [pid for pid in ids if pid not in keep]
    pipe = client.pipeline(transaction=False)
    for pid in gone:
        for key in (keys.product(version, pid), keys.summary(version, pid), keys.product_meta(version, pid)):
            pipe.delete(key)  # one key per DEL: the cluster pipeline routes single-key commands only
    if gone:
        pipe.execute()
    return len(gone)


def publish_features(client: SyncRedis, version: str, storage: str, product_dim: int, root: Path,
                     writers: int = 4, chunk: int = 1000) -> UpsertResult:
    """Stream ``hmpps encode``'s shards into ``version`` with ``writers`` threads, each writing whole
    shards in pipelined chunks of UPSERT scripts (redis-py clients, cluster ones too, are thread-safe;
    each thread builds its own pipelines). Idempotent like any upsert: a rerun writes nothing new."""
    from concurrent.futures import ThreadPoolExecutor

    from contract.shards import read_index, read_shard

    if writers < 1 or chunk < 1:
        raise InputError("--writers must be at least 1")
    t0 = time.perf_counter()
    doc = read_index(root)
    if doc["bundle_version"] != version or int(doc["product_dim"]) != product_dim:
        raise InputError(f"{root} holds features of bundle {doc['bundle_version']} ({doc['product_dim']} columns), "
                         f"not of {version} ({product_dim})")
    require_published(client, version)

    def one(entry: dict[str, Any]) -> tuple[UpsertResult, float]:
        shard = read_shard(Path(root) / entry["file"])
        res, newest = UpsertResult(), 0.0
        for start in range(0, len(shard), chunk):
            rows = [(shard.product_ids[i], shard.hashes[i], float(shard.updated_at[i]),
                     encode_vector(shard.features[i], storage), shard.summaries[i])
                    for i in range(start, min(start + chunk, len(shard)))]
            part = write_encoded(client, version, rows, mark_newest=False)
            res.add(part)
            if part.written:
                newest = max(newest, max(r[2] for r in rows))
        return res, newest

    total, newest = UpsertResult(), 0.0
    with ThreadPoolExecutor(max_workers=writers) as pool:
        for res, at in pool.map(one, doc["shards"]):
            total.add(res)
            newest = max(newest, at)
    if newest:
        mark_upserted(client, version, newest)
    total.seconds = time.perf_counter() - t0
    return total
