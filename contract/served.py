"""A served ranking, as the service logs it and ``hmpps data from-logs`` reads it.

One compact JSON record per rerank response in the ``hmpps:served`` stream
(field ``r``)::

    {"id": request id, "u": user id, "q": query, "a": arm, "v": model version,
     "f": fallback or null, "ts": unix seconds, "n": how many candidates the caller sent,
     "c": [[product id, original position (0-based), served score or null, caller's score or null,
            display probability or null, team or null], ...]}             # in served order
    optional: "x": the exploration policy, "ps": the whole ranking's probability under it,
              "tm": an interleaved arm's two team names

The last two item fields are written only when set: an exploring arm logs each
item's probability of being shown at its position (contract/exploration.py), an
interleaved arm the team that placed it (contract/interleaving.py).

The caller's scores and list length are what the student's position and score
signals read, so a retraining job rebuilds the inputs the service saw.
Impressions, clicks, dwell (``/feedback``) and the events of ``POST /events``
carry the same request id, which is how they join to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FIELD = "r"


@dataclass(frozen=True)
class ServedItem:
    product_id: str
    original_position: int  # 0-based index in the caller's list
    score: float | None  # the student's P(yes); the caller's score under passthrough or fallback
    caller_score: float | None = None  # the first-stage score the caller sent
    propensity: float | None = None  # P(this item at this position) under an exploring arm's policy
    team: str | None = None  # the team that placed it, on an interleaved arm


@dataclass(frozen=True)
class ServedRanking:
    request_id: str
    user_id: str
    query: str
    arm: str
    model_version: str
    fallback: str | None
    ts: float
    items: tuple[ServedItem, ...]  # in served order
    listed: int = 0  # candidates the caller sent (more than ``items`` when top_n trimmed them)
    policy: str | None = None  # the exploration policy that drew this ranking
    slate_propensity: float | None = None  # the probability of the shown ranking under it
    teams: tuple[str, str] | None = None  # an interleaved arm's teams

    def to_json(self) -> str:
        d: dict[str, Any] = {"id": self.request_id, "u": self.user_id, "q": self.query, "a": self.arm,
                             "v": self.model_version, "f": self.fallback, "ts": round(self.ts, 3),
                             "n": self.listed or len(self.items), "c": [_item(i) for i in self.items]}
        if self.policy is not None:
            d["x"], d["ps"] = self.policy, self.slate_propensity
        if self.teams is not None:
            d["tm"] = list(self.teams)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ServedRanking:
        """Parse one record; ``ValueError`` names what is wrong."""
        try:
            d: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"served record is not JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise ValueError("served record must be a JSON object")
        missing = [k for k in ("id", "u", "q", "a", "v", "ts", "c") if k not in d]
        if missing:
            raise ValueError(f"served record lacks {missing}")
        items = []
        if not isinstance(d["c"], list):
            raise ValueError("served record: 'c' must be a list of candidates")
        for c in d["c"]:
            # 3 fields: records written before the caller's score was logged
            if not (isinstance(c, list) and 3 <= len(c) <= 6 and isinstance(c[0], str) and isinstance(c[1], int)
                    and all(x is None or isinstance(x, (int, float)) for x in c[2:5])
                    and (len(c) < 6 or c[5] is None or isinstance(c[5], str))):
                raise ValueError("served candidate must be [product id, position, score, caller score, display "
                                 f"probability, team], got {c!r}")
            c = list(c) + [None] * (6 - len(c))
            score, caller, propensity = (None if x is None else float(x) for x in c[2:5])
            items.append(ServedItem(c[0], c[1], score, caller, propensity, c[5]))
        listed = d.get("n", len(items))
        if not isinstance(listed, int) or listed < len(items):
            raise ValueError(f"served record: 'n' must be an int >= the {len(items)} served candidates, got {listed!r}")
        teams = d.get("tm")
        if teams is not None and not (isinstance(teams, list) and len(teams) == 2
                                      and all(isinstance(t, str) for t in teams)):
            raise ValueError(f"served record: 'tm' must be two team names, got {teams!r}")
        ps = d.get("ps")
        if ps is not None and not (isinstance(ps, (int, float)) and 0 < ps <= 1):
            raise ValueError(f"served record: 'ps' must be a probability in (0, 1], got {ps!r}")
        return cls(str(d["id"]), str(d["u"]), str(d["q"]), str(d["a"]), str(d["v"]), d.get("f"), float(d["ts"]),
                   tuple(items), listed, d.get("x"), None if ps is None else float(ps),
                   None if teams is None else (teams[0], teams[1]))


def _item(i: ServedItem) -> list[Any]:
    row: list[Any] = [i.product_id, i.original_position, i.score, i.caller_score]
    if i.team is not None:
        return row + [i.propensity, i.team]
    return row + [i.propensity] if i.propensity is not None else row
