"""User histories in Redis, the layout both sides write: one sorted set per user.

Members are ``event_id \\x1f product_id`` (``contract.keys.history_member``), scored by the
action's unix time, so a late action lands in its place, a retried one changes nothing,
and trimming keeps the newest ``cap``. The service appends live actions
(``service.infra.histories``); publishing a bundle seeds them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from contract import keys
from contract.redis_client import SyncRedis


def seed_histories(client: SyncRedis, rows: Iterable[dict[str, Any]], cap: int, history_ttl_s: int, chunk: int = 1000) -> int:
    """Merge a bundle's histories into the live ones (sync; ``hmpps publish``).

    ``ZADD NX``: a member already there keeps its place, newer actions are never displaced
    (trimming keeps the newest ``cap``), and publishing again changes nothing. Rows without
    timestamps (bundles from before histories were live) rank below any timed action.
    """
    pipe = client.pipeline(transaction=False)
    n = pending = 0
    for row in rows:
        items = row["history"][:cap]  # newest first
        times = row.get("timestamps") or [-float(i + 1) for i in range(len(items))]
        if items:
            key = keys.user_history(row["user_id"])
            members = {keys.history_member(f"seed-{t:g}-{pid}", pid): float(t) for pid, t in zip(items, times, strict=True)}
            pipe.zadd(key, members, nx=True)
            pipe.zremrangebyrank(key, 0, -(cap + 1))
            if history_ttl_s > 0:
                pipe.expire(key, history_ttl_s)
            pending += 3
        n += 1
        if pending >= chunk:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            pending = 0
    if pending:
        pipe.execute()
    return n
