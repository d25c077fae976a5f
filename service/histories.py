"""User histories: user data that outlives bundle versions and takes each new action as it arrives.

One sorted set per user (``contract.keys.user_history``): members are
``event_id \\x1f product_id``, scored by the event's unix time, so a late event
lands in its place, a retried one changes nothing, and the newest ``cap`` are
kept. ``hmpps publish`` seeds histories from a bundle without ever displacing
newer actions; ``POST /events`` appends, one round trip per batch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contract import keys
from contract.constants import EVENT_DEDUPE_TTL_S, EVENTS_STREAM_MAXLEN
from contract.events import Event

# KEYS: seen marker, events stream, user history, product features (of the live version)
# ARGV: dedupe ttl, event json, counts as history (0/1), member, score, cap, history ttl (0: none), stream maxlen
# returns {new (0/1), appended (0/1), product known (0/1)}
APPEND = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {0, 0, 0} end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[2])
local known = redis.call('EXISTS', KEYS[4])
if ARGV[3] ~= '1' then return {1, 0, known} end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', KEYS[3], ARGV[7]) end
return {1, 1, known}
"""


@dataclass
class AppendResult:
    accepted: int = 0
    duplicates: int = 0
    history_appends: int = 0
    unknown_products: int = 0
    accepted_types: Counter[str] = field(default_factory=Counter)


def event_json(e: Event) -> str:
    return json.dumps({k: v for k, v in e.__dict__.items() if v is not None}, separators=(",", ":"))


async def append_events(client: Any, script: Any, events: Iterable[Event], history_types: frozenset[str],
                        version: str | None, cap: int, history_ttl_s: int) -> AppendResult:
    """Record a batch: every new event into the stream, the history types into their users' histories."""
    batch = list(events)
    pipe = client.pipeline(transaction=False)
    for e in batch:
        product_key = keys.product(version, e.product_id) if version else keys.event_seen("\0none")
        await script(keys=[keys.event_seen(e.event_id), keys.EVENTS_STREAM, keys.user_history(e.user_id), product_key],
                     args=[EVENT_DEDUPE_TTL_S, event_json(e), 1 if e.type in history_types else 0,
                           keys.history_member(e.event_id, e.product_id), e.timestamp, cap, history_ttl_s,
                           EVENTS_STREAM_MAXLEN], client=pipe)
    out = AppendResult()
    for e, (new, appended, known) in zip(batch, await pipe.execute(), strict=True):
        if not new:
            out.duplicates += 1
            continue
        out.accepted += 1
        out.accepted_types[e.type] += 1
        out.history_appends += int(appended)
        out.unknown_products += int(bool(version) and not known)
    return out


def seed_histories(client: Any, rows: Iterable[dict[str, Any]], cap: int, history_ttl_s: int, chunk: int = 1000) -> int:
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
