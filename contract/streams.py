"""Reading the service's Redis streams by time range: one way for the A/B report and from-logs.

Stream ids start with the write's unix time in ms, so a time filter is a range read.
Takes any redis-py client (single node or cluster); nothing is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from contract.keys import as_text


def iter_stream(client: Any, key: str, since: float | None = None, until: float | None = None,
                batch: int = 5000) -> Iterator[tuple[str, dict[Any, Any]]]:
    """Every entry (id, fields) of a stream written between two unix times, in order, read in batches."""
    lo = "-" if since is None else str(int(math.floor(since * 1000)))
    hi = "+" if until is None else str(int(math.floor(until * 1000)))
    while True:
        chunk = client.xrange(key, min=lo, max=hi, count=batch)
        if not chunk:
            return
        for sid, fields in chunk:
            yield as_text(sid), fields
        if len(chunk) < batch:
            return
        lo = "(" + as_text(chunk[-1][0])  # exclusive


def entry_field(fields: dict[Any, Any], name: str) -> Any:
    """A stream entry's field, whether the client decodes responses or not."""
    return fields[name.encode()] if name.encode() in fields else fields.get(name)
