"""Console and Markdown reporting shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.reports import markdown_table

METRIC_KEYS = ("MRR@8", "NDCG@4", "Recall@4", "Recall@1")


SAMPLED_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def metrics_table(rows: dict[str, dict[str, Any]], baseline: str | None = None,
                  keys: tuple[str, ...] = METRIC_KEYS) -> str:
    """A Markdown table of the paper's metrics (or ``keys``); with a baseline, relative improvement per metric."""
    base = rows.get(baseline) if baseline else None

    def cell(name: str, m: dict[str, Any], k: str) -> str:
        if base is not None and name != baseline and base[k] > 0:
            return f"{m[k]:.4f} ({(m[k] / base[k] - 1) * 100:+.1f}%)"
        return f"{m[k]:.4f}"
    return markdown_table(["model", *keys, "n"], [[name, *(cell(name, m, k) for k in keys), m["n"]]
                                                  for name, m in rows.items()])


def print_stats(stats: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dataset {stats['name']} -> {out}")
    for col in ("#users", "#products", "#queries", "#interactions", "test queries", "fingerprint"):
        table.add_column(col, justify="right")
    table.add_row(f"{stats['users']:,}", f"{stats['products']:,}", f"{stats['queries']:,}",
                  f"{stats['interactions']:,}", f"{stats['test_queries']:,}", stats["fingerprint"])
    Console(stderr=False).print(table)
