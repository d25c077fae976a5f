"""Console and Markdown reporting shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRIC_KEYS = ("MRR@8", "NDCG@4", "Recall@4", "Recall@1")


SAMPLED_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def metrics_table(rows: dict[str, dict[str, Any]], baseline: str | None = None,
                  keys: tuple[str, ...] = METRIC_KEYS) -> str:
    """A Markdown table of the paper's metrics (or ``keys``); with a baseline, relative improvement per metric."""
    head = "| model | " + " | ".join(keys) + " | n |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 1)]
    base = rows.get(baseline) if baseline else None
    for name, m in rows.items():
        cells = []
        for k in keys:
            cell = f"{m[k]:.4f}"
            if base is not None and name != baseline and base[k] > 0:
                cell += f" ({(m[k] / base[k] - 1) * 100:+.1f}%)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['n']} |")
    return "\n".join(lines)


def print_stats(stats: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dataset {stats['name']} -> {out}")
    for col in ("#users", "#products", "#queries", "#interactions", "test queries", "fingerprint"):
        table.add_column(col, justify="right")
    table.add_row(f"{stats['users']:,}", f"{stats['products']:,}", f"{stats['queries']:,}",
                  f"{stats['interactions']:,}", f"{stats['test_queries']:,}", stats["fingerprint"])
    Console(stderr=False).print(table)
