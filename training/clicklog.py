"""``hmpps data from-logs``: served rankings joined with the clicks, dwell and purchases that followed them.

Three streams feed it, read from Redis or from a JSONL export of them
(``hmpps data export-logs``): the served rankings (``contract/served.py``), the
feedback events of ``/feedback`` (impressions, clicks, dwell) and the shop's
events of ``POST /events`` (purchases, add-to-cart, clicks). Feedback and shop
events carry the request id of the rerank they follow; that is the join, kept
only within ``window_s`` after the ranking was served.

Labels follow the cascade click model: a clicked item is positive; an item
skipped above the last click was examined and passed over, so negative; an
item below the last click may never have been examined, so it is unobserved
and carries no label. A ranking without a click gives no labels. Positives are
graded: a purchase (or add-to-cart) above an efficient click (dwell > 5 s)
above a plain click.

Every item keeps its served position, so a learner can correct for position
bias. ``estimate_propensities`` fits the position-based model (a click needs
the position to be examined and the item to be attractive) by EM over every
shown ranking, the regression-EM of Wang et al. (WSDM 2018) with one
attractiveness per (query, product): it is identifiable because the same item
is shown at different positions by different arms and requests.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract import keys
from contract.constants import EFFICIENT_DWELL_S
from contract.errors import InputError
from contract.events import DEFAULT_POSITIVE_TYPES
from contract.reports import markdown_table
from contract.served import FIELD as SERVED_FIELD
from contract.served import ServedRanking
from contract.streams import entry_field, iter_stream

STREAMS = {"served": keys.SERVED_STREAM, "feedback": keys.FEEDBACK_STREAM, "events": keys.EVENTS_STREAM}
PURCHASE_TYPES = ("purchase", "add_to_cart")
CLICK_TYPES = ("click",)
WINDOW_S = 1800.0
SKEW_S = 5.0  # an event may be stamped a little before the ranking by another clock


@dataclass(frozen=True)
class LabelWeights:
    """Weight of a positive by what the user did; a skipped (negative) item weighs 1."""

    click: float = 1.0
    efficient: float = 2.0  # a click with dwell > 5 s
    purchase: float = 3.0

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"label weight {name}={v!r} must be a positive number")


@dataclass
class Logs:
    """The three streams' records, in stream order; ``bad`` counts records that did not parse."""

    served: list[ServedRanking] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    bad: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, stream: str, raw: str | bytes | dict[str, Any], where: str) -> None:
        try:
            if stream == "served":
                self.served.append(ServedRanking.from_json(raw if not isinstance(raw, dict) else json.dumps(raw)))
                return
            d = json.loads(raw) if not isinstance(raw, dict) else raw
            if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                raise ValueError("record must be an object with a 'type'")
            (self.feedback if stream == "feedback" else self.events).append(d)
        except ValueError as e:
            self.bad[stream] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{where}: {e}")


def _entries(client: Any, since: float | None, until: float | None
             ) -> Iterator[tuple[str, str, str | bytes | None]]:
    """(stream name, entry id, raw record) of the three streams, stream by stream."""
    for stream, key in STREAMS.items():
        for sid, fields in iter_stream(client, key, since, until):
            yield stream, sid, entry_field(fields, SERVED_FIELD if stream == "served" else "e")


def read_logs_redis(client: Any, since: float | None = None, until: float | None = None) -> Logs:
    logs = Logs()
    for stream, sid, raw in _entries(client, since, until):
        if raw is None:
            logs.bad[stream] += 1
            continue
        logs.add(stream, raw, f"{STREAMS[stream]} {sid}")
    return logs


def export_logs(client: Any, out: Path, since: float | None = None, until: float | None = None) -> Counter[str]:
    """The three streams as JSONL, one ``{"stream", "id", "record"}`` per entry (written atomically)."""
    from contract.reports import atomic_write_text

    counts: Counter[str] = Counter()
    lines = []
    for stream, sid, raw in _entries(client, since, until):
        if raw is None:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            counts["unparseable"] += 1  # from-logs would skip it too
            continue
        lines.append(json.dumps({"stream": stream, "id": sid, "record": record}, separators=(",", ":")))
        counts[stream] += 1
    atomic_write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    return counts


def read_logs_jsonl(path: Path, since: float | None = None, until: float | None = None) -> Logs:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such log export (write one with 'hmpps data export-logs')")
    logs = Logs()
    lo = None if since is None else since * 1000
    hi = None if until is None else until * 1000
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{Path(path).name}:{n}"
            try:
                d = json.loads(line)
                stream, sid, rec = d["stream"], str(d["id"]), d["record"]
                if stream not in STREAMS:
                    raise ValueError(f"unknown stream {stream!r} (expected one of {sorted(STREAMS)})")
                ms = float(sid.split("-")[0])
            except (ValueError, KeyError, TypeError) as e:
                logs.bad["lines"] += 1
                if len(logs.examples) < 5:
                    logs.examples.append(f"{where}: {e}")
                continue
            if (lo is not None and ms < lo) or (hi is not None and ms > hi):
                continue
            logs.add(stream, rec, where)
    return logs


@dataclass
class LabelledItem:
    product_id: str
    served_position: int  # 0-based
    original_position: int  # 0-based, in the caller's list
    served_score: float | None
    caller_score: float | None
    clicked: bool = False
    dwell_s: float = 0.0
    purchased: bool = False
    label: int | None = None  # 1 positive, 0 skipped above the last click, None unobserved
    weight: float = 0.0  # the positive's grade (before any propensity correction); 1 for a negative


@dataclass
class LabelledRanking:
    request_id: str
    user_id: str
    query: str
    arm: str
    model_version: str
    fallback: str | None
    ts: float
    listed: int
    shown: bool  # an impression or a click joined it
    items: list[LabelledItem]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelledRanking:
        return cls(**{**d, "items": [LabelledItem(**i) for i in d["items"]]})


@dataclass
class JoinStats:
    rankings: int = 0
    shown: int = 0
    with_click: int = 0
    duplicate_rankings: int = 0
    joined: Counter[str] = field(default_factory=Counter)  # by "stream:type"
    left_over: Counter[str] = field(default_factory=Counter)  # by reason


def _event_time(e: dict[str, Any]) -> float | None:
    t = e.get("ts", e.get("timestamp"))
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def join_and_label(logs: Logs, window_s: float = WINDOW_S, weights: LabelWeights | None = None
                   ) -> tuple[list[LabelledRanking], JoinStats]:
    """Each served ranking with the events that name its request id within the window, cascade-labelled."""
    if not (window_s > 0):
        raise InputError(f"window_s={window_s}: must be positive")
    weights = weights or LabelWeights()
    stats = JoinStats()
    by_id: dict[str, LabelledRanking] = {}
    for r in logs.served:
        if r.request_id in by_id:
            stats.duplicate_rankings += 1  # a caller reused a request id: the first ranking wins
            continue
        by_id[r.request_id] = LabelledRanking(
            r.request_id, r.user_id, r.query, r.arm, r.model_version, r.fallback, r.ts, r.listed, False,
            [LabelledItem(i.product_id, k, i.original_position, i.score, i.caller_score)
             for k, i in enumerate(r.items)])
    stats.rankings = len(by_id)

    def attach(stream: str, e: dict[str, Any]) -> None:
        kind = str(e.get("type"))
        rid = e.get("request_id")
        if not rid:
            stats.left_over[f"{stream}: no request id"] += 1
            return
        r = by_id.get(str(rid))
        if r is None:
            stats.left_over[f"{stream}: no served ranking"] += 1
            return
        t = _event_time(e)
        if t is not None and not (r.ts - SKEW_S <= t <= r.ts + window_s):
            stats.left_over[f"{stream}: outside the window"] += 1
            return
        if kind == "impression":
            r.shown = True
            stats.joined[f"{stream}:{kind}"] += 1
            return
        item = next((i for i in r.items if i.product_id == e.get("product_id")), None)
        if item is None:
            stats.left_over[f"{stream}: product not in the ranking"] += 1
            return
        if stream == "feedback" and kind == "click":
            item.clicked = True
        elif stream == "feedback" and kind == "dwell":
            item.clicked = True
            item.dwell_s = max(item.dwell_s, float(e.get("dwell_s") or 0.0))
        elif stream == "events" and kind in PURCHASE_TYPES:
            item.clicked = item.purchased = True
        elif stream == "events" and kind in CLICK_TYPES:
            item.clicked = True
        else:
            stats.left_over[f"{stream}: type {kind} carries no label"] += 1
            return
        r.shown = True
        stats.joined[f"{stream}:{kind}"] += 1

    for e in logs.feedback:
        attach("feedback", e)
    for e in logs.events:
        attach("events", e)

    out = list(by_id.values())
    for r in out:
        stats.shown += int(r.shown)
        clicked = [i.served_position for i in r.items if i.clicked]
        if not clicked:
            continue
        stats.with_click += 1
        last = max(clicked)
        for i in r.items:
            if i.clicked:
                i.label = 1
                i.weight = weights.purchase if i.purchased else (
                    weights.efficient if i.dwell_s > EFFICIENT_DWELL_S else weights.click)
            elif i.served_position < last:
                i.label, i.weight = 0, 1.0
    return out, stats


@dataclass
class Propensities:
    """Examination probability by served position, relative to the top (position 0 is 1.0)."""

    by_position: list[float]
    examination: list[float]  # the model's absolute examination probabilities
    impressions: list[int]  # per position, the shown items the fit used
    iterations: int
    method: str = "position-based model, regression-EM with one attractiveness per (query, product)"

    def weight(self, position: int, clip: float) -> float:
        """Inverse propensity, clipped: a rare deep click must not dominate the loss."""
        p = self.by_position[min(position, len(self.by_position) - 1)] if self.by_position else 1.0
        return float(min(1.0 / max(p, 1e-9), clip))


def estimate_propensities(rankings: list[LabelledRanking], max_position: int | None = None,
                          iterations: int = 200, tol: float = 1e-7) -> Propensities:
    """EM for P(click) = theta[position] * gamma[(query, product)] over the shown rankings."""
    pos, pair, click = [], [], []
    pairs: dict[tuple[str, str], int] = {}
    for r in rankings:
        if not r.shown:
            continue
        q = keys.normalize_query(r.query)
        for i in r.items:
            if max_position is not None and i.served_position >= max_position:
                continue
            pos.append(i.served_position)
            pair.append(pairs.setdefault((q, i.product_id), len(pairs)))
            click.append(float(i.clicked))
    if not pos:
        raise InputError("no shown ranking to estimate propensities from (no impression or click joined a ranking)")
    k = np.asarray(pos)
    j = np.asarray(pair)
    c = np.asarray(click)
    n_pos = int(k.max()) + 1
    n_k = np.bincount(k, minlength=n_pos).astype(float)
    n_j = np.bincount(j, minlength=len(pairs)).astype(float)
    theta = np.full(n_pos, 0.5)
    gamma = np.full(len(pairs), 0.5)
    used = 0
    for used in range(1, iterations + 1):  # noqa: B007 - kept: the report says how many iterations ran
        t, g = theta[k], gamma[j]
        denom = np.maximum(1.0 - t * g, 1e-12)
        e_seen = c + (1 - c) * t * (1 - g) / denom  # P(examined | no click) where no click
        r_attr = c + (1 - c) * (1 - t) * g / denom  # P(attractive | no click)
        new_theta = np.clip(np.bincount(k, e_seen, n_pos) / np.maximum(n_k, 1), 1e-6, 1.0)
        gamma = np.clip(np.bincount(j, r_attr, len(pairs)) / np.maximum(n_j, 1), 1e-6, 1 - 1e-6)
        done = float(np.abs(new_theta - theta).max()) < tol
        theta = new_theta
        if done:
            break
    rel = theta / theta[0]
    return Propensities([round(float(x), 6) for x in rel], [round(float(x), 6) for x in theta],
                        [int(x) for x in n_k], used)


def ctr_by_position(rankings: list[LabelledRanking]) -> dict[str, list[tuple[int, int]]]:
    """Per arm: (shown, clicked) at each served position, over shown rankings."""
    acc: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rankings:
        if not r.shown:
            continue
        for i in r.items:
            for arm in (r.arm, "all"):
                acc[arm][i.served_position][0] += 1
                acc[arm][i.served_position][1] += int(i.clicked)
    return {arm: [tuple(v[p]) for p in range(max(v) + 1)] for arm, v in acc.items()}  # type: ignore[misc]


def label_counts(rankings: Iterable[LabelledRanking]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in rankings:
        for i in r.items:
            out["positive" if i.label == 1 else "negative" if i.label == 0 else "unobserved"] += 1
            if i.label == 1:
                out["purchase" if i.purchased else "efficient click" if i.dwell_s > EFFICIENT_DWELL_S
                    else "click"] += 1
    return out


def history_events(logs: Logs, types: tuple[str, ...] = DEFAULT_POSITIVE_TYPES) -> dict[str, list[list[Any]]]:
    """Per user, the logged events that join a history, ``[unix time, product id]`` oldest first:
    with the bundle's histories they rebuild what the service saw at each request."""
    out: dict[str, list[list[Any]]] = defaultdict(list)
    seen: set[str] = set()
    for e in logs.events:
        if e.get("type") not in types or not e.get("user_id") or not e.get("product_id"):
            continue
        if e.get("event_id") in seen:
            continue
        seen.add(str(e.get("event_id")))
        t = _event_time(e)
        if t is not None:
            out[str(e["user_id"])].append([t, str(e["product_id"])])
    return {u: sorted(v) for u, v in out.items()}


def plot_ctr(ctr: dict[str, list[tuple[int, int]]], props: Propensities | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm, rows in sorted(ctr.items()):
        xs = [p + 1 for p, (n, _) in enumerate(rows) if n]
        ys = [c / n for n, c in rows if n]
        ax.plot(xs, ys, marker="o", label=f"CTR, {arm}", linestyle="-" if arm == "all" else "--")
    if props is not None:
        top = ctr.get("all", [(1, 0)])[0]
        scale = top[1] / top[0] if top[0] else 1.0
        ax.plot([p + 1 for p in range(len(props.by_position))], [scale * x for x in props.by_position],
                color="black", linestyle=":", label="estimated examination x top CTR")
    ax.set_xlabel("served position")
    ax.set_ylabel("click-through rate")
    ax.set_title("CTR by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)  # into from_logs' temporary directory: renamed whole with it
    plt.close(fig)


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
