"""Raw records -> normalized dataset directory (k-core, cleanup, queries, split)."""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from contract.errors import InputError
from training.amazon import ParseReport, RawInteraction, RawProduct
from training.artifacts import SCHEMA_VERSION, atomic_dir, fingerprint_files, write_json, write_jsonl
from training.stats import dataset_stats, stats_markdown
from training.text import clean_category_path, clean_text, content_terms, is_markup_junk, query_from_path

TRAIN_FRACTION = 0.7


def k_core(interactions: list[RawInteraction], k: int) -> list[RawInteraction]:
    """Iteratively drop users and items with fewer than k interactions until stable."""
    rows = interactions
    while True:
        users = Counter(r.user_id for r in rows)
        items = Counter(r.product_id for r in rows)
        kept = [r for r in rows if users[r.user_id] >= k and items[r.product_id] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def dedupe(interactions: list[RawInteraction]) -> list[RawInteraction]:
    """One purchase per (user, product): the earliest."""
    first: dict[tuple[str, str], RawInteraction] = {}
    for r in interactions:
        key = (r.user_id, r.product_id)
        if key not in first or r.timestamp < first[key].timestamp:
            first[key] = r
    return list(first.values())


def n_train(n: int) -> int:
    """Chronological 70/30 per user, with at least one purchase on each side when n >= 2."""
    if n < 2:
        return n
    return min(n - 1, max(1, math.floor(TRAIN_FRACTION * n)))


def normalize_product(raw: RawProduct | None, product_id: str) -> dict[str, Any]:
    raw = raw or RawProduct(product_id)
    brand = clean_text(raw.brand)
    if is_markup_junk(brand):
        brand = ""
    description = clean_text(raw.description)
    title_raw = "" if raw.title is None else str(raw.title)
    if title_raw and not is_markup_junk(title_raw):
        title, title_source = clean_text(title_raw), "title"
    elif brand:
        title, title_source = brand, "brand"
    elif description:
        title, title_source = " ".join(description.split()[:8]), "description"
    else:
        title, title_source = product_id, "id"
    paths = [clean_category_path(p) for p in raw.categories]
    path = max(paths, key=len) if paths else []  # max keeps the first of equal length
    return {
        "product_id": product_id,
        "title": title,
        "title_source": title_source,
        "brand": brand,
        "category": path,
        "main_category": clean_text(raw.main_category),
        "description": description,
        "image": raw.image,
        "image_url": raw.image_url,
        "has_meta": raw.title is not None or bool(raw.categories) or raw.description is not None,
        "raw": {"title": title_raw, "brand": "" if raw.brand is None else str(raw.brand),
                "description": raw.description if isinstance(raw.description, str) else "\n".join(map(str, raw.description or []))},
        **({"extra": raw.extra} if raw.extra else {}),
    }


def assign_queries(products: dict[str, dict[str, Any]], dataset_name: str = "") -> Counter[str]:
    """Sets ``query``/``query_source`` on every product; returns the source counts.

    When no product has a category path (reviews without metadata), the dataset
    name stands in for the root category, so every purchase shares one query.
    """
    roots = Counter(p["category"][0] for p in products.values() if p["category"])
    default_root = roots.most_common(1)[0][0] if roots else ""
    root_source = "dataset_root"
    if not default_root:
        default_root, root_source = dataset_name.replace("_", " ").replace("-", " "), "dataset_name"
    sources: Counter[str] = Counter()
    for p in products.values():
        query, source = query_from_path(p["category"]), "category"
        if not query and p["main_category"]:
            query, source = " ".join(content_terms(p["main_category"])), "main_category"
        if not query and default_root:
            query, source = " ".join(content_terms(default_root)), root_source
        if not query:
            source = "none"
        p["query"], p["query_source"] = query or None, source
        sources[source] += 1
    return sources


def build_dataset(
    interactions: list[RawInteraction],
    meta: dict[str, RawProduct],
    out: str | Path,
    *,
    name: str,
    min_core: int,
    parse_reports: list[ParseReport],
    params: dict[str, Any] | None = None,
    image_sources: dict[str, Path] | None = None,
    side_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Write the normalized dataset directory atomically and return its stats.

    ``image_sources`` maps a product's ``image`` (its path inside the dataset) to the file to copy;
    ``side_files`` maps a file name to a file copied as it is (the synthetic ground truth).
    """
    t0 = time.time()
    if not interactions:
        raise InputError("no valid interactions were read; nothing to build (see the parse report above)")
    deduped = dedupe(interactions)
    cored = k_core(deduped, min_core) if min_core > 1 else deduped
    if not cored:
        raise InputError(
            f"no interactions survive {min_core}-core filtering ({len(deduped)} unique user-product pairs read); "
            "try a smaller --min-core"
        )
    product_ids = sorted({r.product_id for r in cored})
    products = {pid: normalize_product(meta.get(pid), pid) for pid in product_ids}
    query_sources = assign_queries(products, name)

    by_user: dict[str, list[RawInteraction]] = defaultdict(list)
    for r in cored:
        by_user[r.user_id].append(r)
    rows = []
    event_queries = 0
    for user in sorted(by_user):
        seq = sorted(by_user[user], key=lambda r: (r.timestamp, r.product_id))
        cut = n_train(len(seq))
        for i, r in enumerate(seq):
            p = products[r.product_id]
            # a real search text is used as it is; otherwise the product's category rule
            query = " ".join(r.query.split()) if r.query and r.query.strip() else p["query"]
            event_queries += bool(r.query and r.query.strip())
            rows.append({
                "query_id": f"q{len(rows):07d}",
                "user_id": user,
                "product_id": r.product_id,
                "timestamp": r.timestamp,
                "seq": i,
                "split": "train" if i < cut else "test",
                "query": query,
            })

    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "products.jsonl", (products[pid] for pid in product_ids))
        write_jsonl(tmp / "interactions.jsonl", rows)
        for p in products.values():  # only the images of products that survived the k-core
            src = (image_sources or {}).get(p["image"]) if p["image"] else None
            if src is not None and src.is_file():
                (tmp / p["image"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / p["image"])
        for fname, src in (side_files or {}).items():
            shutil.copy2(src, tmp / fname)
        fingerprint = fingerprint_files([tmp / "products.jsonl", tmp / "interactions.jsonl"])
        stats = dataset_stats(products, rows)
        stats.update({
            "name": name,
            "fingerprint": fingerprint,
            "min_core": min_core,
            "read": {"interactions": len(interactions), "unique_pairs": len(deduped), "after_k_core": len(cored),
                     "meta_records": len(meta)},
            "parse": [r.as_dict() for r in parse_reports],
            "query_sources": dict(query_sources),
            "event_queries": event_queries,
            "seconds": round(time.time() - t0, 2),
        })
        write_json(tmp / "dataset.json", {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "fingerprint": fingerprint,
            "sources": [r.as_dict() for r in parse_reports],
            "params": {"min_core": min_core, "train_fraction": TRAIN_FRACTION, **(params or {})},
            "created_at": int(time.time()),
        })
        write_json(tmp / "stats.json", stats)
        (tmp / "stats.md").write_text(stats_markdown(stats))
    return stats
