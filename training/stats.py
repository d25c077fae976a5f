"""Dataset statistics: the paper's Table 6 plus what a data engineer checks first."""

from __future__ import annotations

from collections import Counter
from typing import Any

from contract.reports import markdown_table


def dataset_stats(products: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    users = Counter(r["user_id"] for r in rows)
    queries = [r for r in rows if r["query"]]
    per_user = sorted(users.values())
    desc_words = [len(p["description"].split()) for p in products.values()]
    return {
        "users": len(users),
        "products": len(products),
        "queries": len({r["query"] for r in queries}),
        "interactions": len(rows),
        "train_interactions": sum(r["split"] == "train" for r in rows),
        "test_interactions": sum(r["split"] == "test" for r in rows),
        "test_queries": sum(r["split"] == "test" for r in queries),
        "train_queries": sum(r["split"] == "train" for r in queries),
        "purchases_without_query": len(rows) - len(queries),
        "interactions_per_user": {"min": per_user[0], "median": per_user[len(per_user) // 2], "max": per_user[-1]},
        "products_with_meta": sum(p["has_meta"] for p in products.values()),
        "products_with_image": sum(bool(p["image"] or p["image_url"]) for p in products.values()),
        "products_with_image_file": sum(bool(p["image"]) for p in products.values()),
        "title_sources": dict(Counter(p["title_source"] for p in products.values())),
        "description_words": {"mean": round(sum(desc_words) / max(1, len(desc_words)), 1), "max": max(desc_words, default=0)},
    }


def stats_markdown(stats: dict[str, Any]) -> str:
    per_user = stats["interactions_per_user"]
    words = stats["description_words"]

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))
    details = [
        ("k-core", stats["min_core"]),
        ("train / test purchases", f"{stats['train_interactions']:,} / {stats['test_interactions']:,}"),
        ("train / test query instances", f"{stats['train_queries']:,} / {stats['test_queries']:,}"),
        ("purchases per user (min / median / max)", f"{per_user['min']} / {per_user['median']} / {per_user['max']}"),
        ("products with metadata", f"{stats['products_with_meta']:,}"),
        ("products with an image (file or URL)", f"{stats['products_with_image']:,}"),
        ("description words (mean / max)", f"{words['mean']} / {words['max']}"),
        ("title sources", counts(stats["title_sources"])),
        ("query sources (products)", counts(stats["query_sources"])),
        ("purchases searched with their own query", f"{stats.get('event_queries', 0):,}"),
    ]
    lines = [
        f"# Dataset statistics: {stats['name']}", "",
        "Like Table 6 of the HMPPS paper (#queries counts distinct query strings).", "",
        markdown_table(["dataset", "#users", "#products", "#queries", "#interactions"],
                       [[stats["name"], *(f"{stats[k]:,}" for k in ("users", "products", "queries", "interactions"))]]),
        "",
        markdown_table(["detail", "value"], details), "",
        "## Input files", "",
        markdown_table(["file", "format", "lines", "valid", "malformed"],
                       [[p["path"], p["format"], f"{p['lines']:,}", f"{p['valid']:,}", f"{p['malformed']:,}"]
                        for p in stats["parse"]], align="llrrr"),
    ]
    bad = [(p["path"], e) for p in stats["parse"] for e in p["malformed_examples"]]
    if bad:
        lines += ["", "Malformed line examples:", ""] + [f"- `{path}` {e}" for path, e in bad]
    return "\n".join(lines) + "\n"
