"""Dataset statistics: the paper's Table 6 plus what a data engineer checks first."""

from __future__ import annotations

from collections import Counter
from typing import Any


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
    lines = [
        f"# Dataset statistics: {stats['name']}",
        "",
        "Like Table 6 of the HMPPS paper (#queries counts distinct query strings).",
        "",
        "| dataset | #users | #products | #queries | #interactions |",
        "|---|---:|---:|---:|---:|",
        f"| {stats['name']} | {stats['users']:,} | {stats['products']:,} | {stats['queries']:,} | {stats['interactions']:,} |",
        "",
        "| detail | value |",
        "|---|---:|",
        f"| k-core | {stats['min_core']} |",
        f"| train / test purchases | {stats['train_interactions']:,} / {stats['test_interactions']:,} |",
        f"| train / test query instances | {stats['train_queries']:,} / {stats['test_queries']:,} |",
        f"| purchases per user (min / median / max) | {stats['interactions_per_user']['min']} / "
        f"{stats['interactions_per_user']['median']} / {stats['interactions_per_user']['max']} |",
        f"| products with metadata | {stats['products_with_meta']:,} |",
        f"| products with an image (file or URL) | {stats['products_with_image']:,} |",
        f"| description words (mean / max) | {stats['description_words']['mean']} / {stats['description_words']['max']} |",
        f"| title sources | {', '.join(f'{k}: {v}' for k, v in sorted(stats['title_sources'].items()))} |",
        f"| query sources | {', '.join(f'{k}: {v}' for k, v in sorted(stats['query_sources'].items()))} |",
        "",
        "## Input files",
        "",
        "| file | format | lines | valid | malformed |",
        "|---|---|---:|---:|---:|",
    ]
    for p in stats["parse"]:
        lines.append(f"| {p['path']} | {p['format']} | {p['lines']:,} | {p['valid']:,} | {p['malformed']:,} |")
    bad = [(p["path"], e) for p in stats["parse"] for e in p["malformed_examples"]]
    if bad:
        lines += ["", "Malformed line examples:", ""] + [f"- `{path}` {e}" for path, e in bad]
    return "\n".join(lines) + "\n"
