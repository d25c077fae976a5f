"""A served ranking, as the service logs it and ``hmpps data from-logs`` reads it.

One compact JSON record per rerank response in the ``hmpps:served`` stream
(field ``r``)::

    {"id": request id, "u": user id, "q": query, "a": arm, "v": model version,
     "f": fallback or null, "ts": unix seconds, "n": how many candidates the caller sent,
     "c": [[product id, original position (0-based), served score or null, caller's score or null], ...]}
                                                                                  # in served order

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

    def to_json(self) -> str:
        return json.dumps({"id": self.request_id, "u": self.user_id, "q": self.query, "a": self.arm,
                           "v": self.model_version, "f": self.fallback, "ts": round(self.ts, 3),
                           "n": self.listed or len(self.items),
                           "c": [[i.product_id, i.original_position, i.score, i.caller_score] for i in self.items]},
                          separators=(",", ":"))

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
            if not (isinstance(c, list) and len(c) in (3, 4) and isinstance(c[0], str) and isinstance(c[1], int)
                    and all(x is None or isinstance(x, (int, float)) for x in c[2:])):
                raise ValueError(f"served candidate must be [product id, position, score, caller score], got {c!r}")
            items.append(ServedItem(c[0], c[1], None if c[2] is None else float(c[2]),
                                    None if len(c) < 4 or c[3] is None else float(c[3])))
        listed = d.get("n", len(items))
        if not isinstance(listed, int) or listed < len(items):
            raise ValueError(f"served record: 'n' must be an int >= the {len(items)} served candidates, got {listed!r}")
        return cls(str(d["id"]), str(d["u"]), str(d["q"]), str(d["a"]), str(d["v"]), d.get("f"), float(d["ts"]),
                   tuple(items), listed)
