"""Summaries of a rate sweep: a Markdown table and a latency-vs-rate plot; latency summaries of the scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contract.reports import markdown_table


def latency_ms(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean in milliseconds of request times in seconds, and how many."""
    import numpy as np

    a = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2), "n": len(samples)}


def bench_script_args(doc: str, requests: int) -> tuple[Any, list[str], list[str]]:
    """A latency script's ``--bundle``, ``--requests`` and ``--out``, and the bundle's products and queries."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    index = json.loads((a.bundle / "features" / "index.json").read_text())
    return a, index["products"], index["queries"]


def write_bench_json(path: Path, doc: dict[str, Any]) -> None:
    """A latency script's result file (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def load_sweep(paths: list[Path]) -> list[dict[str, Any]]:
    reps = [json.loads(Path(p).read_text()) for p in paths]
    return sorted(reps, key=lambda r: r["target_rps"])


def _fallbacks(r: dict[str, Any]) -> int:
    return sum(v for k, v in r["fallback"].items() if k != "none")


def _failures(r: dict[str, Any]) -> int:
    """Non-2xx responses plus client-side errors (timeouts, refused connections)."""
    return sum(v for k, v in r["status"].items() if not k.startswith("2")) + sum(r["errors"].values())


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def saturation(reps: list[dict[str, Any]], max_error_rate: float = 0.01, max_p99_ms: float = 100.0) -> float | None:
    """The highest offered rate that was served without errors or fallbacks above 1% and with p99 under 100 ms."""
    best = None
    for r in reps:
        bad = r["error_rate"] + _fallbacks(r) / max(1, r["requests"])
        p99 = r["latency"]["p99_ms"]
        if bad <= max_error_rate and p99 is not None and p99 <= max_p99_ms:
            best = r["target_rps"]
    return best


def _server(r: dict[str, Any]) -> str:
    srv = r.get("server_latency") or {}
    if srv.get("p50_ms") is None:
        return "n/a"
    return f"{srv['p50_ms']:.2f} / {srv['p99_ms']:.2f}"


def sweep_markdown(reps: list[dict[str, Any]]) -> str:
    lines = [markdown_table(
        ["offered rps", "achieved", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "service's own p50 / p99 ms",
         "non-2xx + client errors", "fail-open"],
        [[f"{r['target_rps']:g}", r["achieved_rps"], *(_ms(r["latency"][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms")),
          _server(r), _failures(r), _fallbacks(r)] for r in reps], align="r" * 9)]
    sat = saturation(reps)
    lines += ["", f"Saturation (highest rate with <= 1% errors+fallbacks and p99 <= 100 ms): "
              f"{'not reached' if sat is None else f'{sat:g} req/s'}", ""]
    return "\n".join(lines)


def plot_sweep(reps: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["target_rps"] for r in reps]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9")):
        ax.plot(rates, [r["latency"][key] for r in reps], marker="o", label=label)
    ax.axhline(5, color="grey", ls=":", lw=1)
    ax.axhline(10, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title("POST /rerank, K=10: latency vs rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def by_scorer(reps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in reps:
        groups.setdefault(r.get("scorer", "unknown"), []).append(r)
    return {k: sorted(v, key=lambda r: r["target_rps"]) for k, v in groups.items()}


def peers_markdown(reps: list[dict[str, Any]], reference: str = "student") -> str:
    """Side by side: each scorer at each rate, its saturation, and the p50 ratio to the reference at shared rates."""
    groups = by_scorer(reps)
    lines = [markdown_table(
        ["scorer", "offered rps", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "service's own p50 / p99 ms",
         "non-2xx + client errors", "fail-open"],
        [[name, f"{r['target_rps']:g}", r["achieved_rps"], *(_ms(r["latency"][k]) for k in ("p50_ms", "p99_ms", "p99_9_ms")),
          _server(r), _failures(r), _fallbacks(r)] for name, rs in groups.items() for r in rs])]
    ref = {r["target_rps"]: r["latency"]["p50_ms"] for r in groups.get(reference, [])}
    summary = []
    for name, rs in groups.items():
        sat = saturation(rs)
        ratios = [f"{r['target_rps']:g} rps: {r['latency']['p50_ms'] / ref[r['target_rps']]:.1f}x" for r in rs
                  if ref.get(r["target_rps"]) and r["latency"]["p50_ms"] is not None]
        summary.append([name, "below the lowest rate" if sat is None else f"{sat:g} req/s",
                        ", ".join(ratios) if name != reference else "reference"])
    lines += ["", markdown_table(["scorer", "saturation (<= 1% errors+fallbacks, p99 <= 100 ms)",
                                  "p50 / reference p50 at shared rates"], summary, align="lrl")]
    return "\n".join(lines) + "\n"


def plot_peers(reps: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, rs) in enumerate(by_scorer(reps).items()):
        color = f"C{i}"
        rates = [r["target_rps"] for r in rs]
        ax.plot(rates, [r["latency"]["p50_ms"] for r in rs], marker="o", color=color, label=f"{name} p50")
        ax.plot(rates, [r["latency"]["p99_ms"] for r in rs], marker="x", ls="--", color=color, label=f"{name} p99")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title("POST /rerank, K=10, one worker: student vs peers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
