"""``hmpps data from-logs``: read, join, label, estimate propensities, write the labelled set and its report."""


from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contract.errors import InputError
from contract.events import DEFAULT_POSITIVE_TYPES
from contract.reports import markdown_table
from training.clicklog.labels import (
    WINDOW_S,
    LabelledRanking,
    LabelWeights,
    history_events,
    join_and_label,
    label_counts,
)
from training.clicklog.logs import Logs
from training.clicklog.propensities import Propensities, ctr_by_position, estimate_propensities, plot_ctr


def report_markdown(summary: dict[str, Any]) -> str:
    s = summary
    lines = ["# Logged traffic -> training labels", "",
             f"Source: {s['source']}; window {s['window_s']:.0f} s after each ranking; "
             f"time range {s['since']} .. {s['until']}.", "",
             markdown_table(["", "count"], [
                 ["served rankings read", s["rankings"]], ["duplicate request ids (ignored)", s["duplicate_rankings"]],
                 ["shown (impression or click joined)", s["shown"]], ["with at least one click", s["with_click"]],
                 ["records that did not parse", sum(s["bad_records"].values())]]), "",
             "## Events joined and left over", "",
             markdown_table(["stream:type", "joined"], [[k, v] for k, v in sorted(s["joined"].items())] or [["-", 0]]),
             "", markdown_table(["left over because", "events"],
                                [[k, v] for k, v in sorted(s["left_over"].items())] or [["-", 0]]), "",
             "## Labelled pairs (cascade)", "",
             markdown_table(["label", "pairs"], [[k, v] for k, v in s["labels"].items()]), "",
             "## CTR by position and the estimated examination propensity", "",
             "![CTR by position](ctr_by_position.png)", ""]
    props = s.get("propensities")
    ctr_all = s["ctr_by_position"].get("all", [])
    rows = []
    for p, (n, c) in enumerate(ctr_all):
        rows.append([p + 1, n, c, f"{c / n:.4f}" if n else "n/a",
                     f"{props['by_position'][p]:.3f}" if props and p < len(props["by_position"]) else "n/a"])
    lines += [markdown_table(["position", "shown", "clicked", "CTR", "propensity (rel. to top)"], rows)]
    if props:
        lines += ["", f"Propensities: {props['method']}, {props['iterations']} EM iterations."]
    return "\n".join(lines) + "\n"


@dataclass
class FromLogsResult:
    out: Path
    summary: dict[str, Any]


def _iso(t: float | None) -> str:
    if t is None:
        return "open"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_logs(logs: Logs, out: Path, source: str, since: float | None = None, until: float | None = None,
              window_s: float = WINDOW_S, weights: LabelWeights | None = None,
              history_types: tuple[str, ...] = DEFAULT_POSITIVE_TYPES) -> FromLogsResult:
    """Join, label, estimate propensities, and write the dataset and its report into ``out`` (whole, or not at all).

    OUT/rankings.jsonl     one labelled ranking per line (``LabelledRanking``), in serving order
    OUT/histories.jsonl    per user, the logged history events ``[[unix time, product id], ...]``
    OUT/propensities.json  examination by served position (``Propensities``)
    OUT/summary.json, OUT/report.md, OUT/ctr_by_position.png
    """
    from training.artifacts import atomic_dir, write_jsonl

    rankings, stats = join_and_label(logs, window_s, weights)
    if not rankings:
        raise InputError(f"{source}: no served ranking in the time range (is HMPPS_SERVED_LOG_SAMPLE 0?)")
    rankings.sort(key=lambda r: r.ts)
    props = estimate_propensities(rankings) if stats.shown else None
    ctr = ctr_by_position(rankings)
    hist = history_events(logs, history_types)
    summary = {
        "source": source, "since": _iso(since), "until": _iso(until), "window_s": window_s,
        "weights": asdict(weights or LabelWeights()), "history_types": list(history_types),
        "rankings": stats.rankings, "duplicate_rankings": stats.duplicate_rankings, "shown": stats.shown,
        "with_click": stats.with_click, "arms": dict(Counter(r.arm for r in rankings)),
        "bad_records": dict(logs.bad), "bad_examples": logs.examples,
        "joined": dict(stats.joined), "left_over": dict(stats.left_over), "labels": dict(label_counts(rankings)),
        "ctr_by_position": ctr, "propensities": asdict(props) if props else None,
        "history_events": sum(len(v) for v in hist.values()), "history_users": len(hist),
    }
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "rankings.jsonl", (r.to_dict() for r in rankings))
        write_jsonl(tmp / "histories.jsonl", ({"user_id": u, "events": v} for u, v in sorted(hist.items())))
        from contract.reports import write_json

        write_json(tmp / "propensities.json", asdict(props) if props else None)
        write_json(tmp / "summary.json", summary)
        plot_ctr(ctr, props, tmp / "ctr_by_position.png")
        (tmp / "report.md").write_text(report_markdown(summary))
    return FromLogsResult(Path(out), summary)


def read_labelled(logs_dir: Path) -> tuple[list[LabelledRanking], dict[str, list[list[Any]]], Propensities | None]:
    """What ``from_logs`` wrote: labelled rankings, logged history events per user, propensities."""
    from training.artifacts import read_json, read_jsonl

    d = Path(logs_dir)
    for name in ("rankings.jsonl", "histories.jsonl", "propensities.json"):
        if not (d / name).is_file():
            raise InputError(f"{d}: no {name}; write this directory with 'hmpps data from-logs'")
    rankings = [LabelledRanking.from_dict(r) for r in read_jsonl(d / "rankings.jsonl")]
    hist = {r["user_id"]: r["events"] for r in read_jsonl(d / "histories.jsonl")}
    p = read_json(d / "propensities.json")
    return rankings, hist, (Propensities(**p) if p else None)
