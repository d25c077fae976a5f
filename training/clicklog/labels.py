"""Joining feedback to the rankings it followed, and labelling by the cascade click model.

Labels follow the cascade click model: a clicked item is positive; an item
skipped above the last click was examined and passed over, so negative; an
item below the last click may never have been examined, so it is unobserved
and carries no label. A ranking without a click gives no labels. Positives are
graded: a purchase (or add-to-cart) above an efficient click (dwell > 5 s)
above a plain click.

Feedback and shop events carry the request id of the rerank they follow; that is the join,
kept only within ``window_s`` after the ranking was served.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from contract.constants import EFFICIENT_DWELL_S
from contract.errors import InputError
from contract.events import DEFAULT_POSITIVE_TYPES
from training.clicklog.logs import Logs

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
    propensity: float | None = None  # its display probability at this position, on an exploring arm
    team: str | None = None  # the team that placed it, on an interleaved arm


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
    policy: str | None = None  # the exploration policy that drew it
    slate_propensity: float | None = None  # the probability of the shown ranking under that policy
    teams: tuple[str, str] | None = None  # an interleaved arm's teams

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelledRanking:
        teams = d.get("teams")
        return cls(**{**d, "items": [LabelledItem(**i) for i in d["items"]],
                      "teams": None if teams is None else tuple(teams)})


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
            [LabelledItem(i.product_id, k, i.original_position, i.score, i.caller_score, propensity=i.propensity,
                          team=i.team) for k, i in enumerate(r.items)], r.policy, r.slate_propensity, r.teams)
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
