"""A served ranking, as the service logs it and ``hmpps data from-logs`` reads it.

One compact JSON record per rerank response in the ``hmpps:served`` stream
(field ``r``)::

    {"id": request id, "u": user id, "q": query, "a": arm, "v": model version,
     "f": fallback or null, "ts": unix seconds,
     "c": [[product id, original position (0-based), score or null], ...]}   # in served order

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

    def to_json(self) -> str:
        return json.dumps({"id": self.request_id, "u": self.user_id, "q": self.query, "a": self.arm,
                           "v": self.model_version, "f": self.fallback, "ts": round(self.ts, 3),
                           "c": [[i.product_id, i.original_position, i.score] for i in self.items]},
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
        for c in d["c"]:
            if not (isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], int)):
                raise ValueError(f"served candidate must be [product id, position, score], got {c!r}")
            items.append(ServedItem(c[0], c[1], None if c[2] is None else float(c[2])))
        return cls(str(d["id"]), str(d["u"]), str(d["q"]), str(d["a"]), str(d["v"]), d.get("f"), float(d["ts"]),
                   tuple(items))
