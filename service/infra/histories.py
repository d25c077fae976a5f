"""User histories: user data that outlives bundle versions and takes each new action as it arrives.

One sorted set per user (``contract.keys.user_history``): members are
``event_id \\x1f product_id``, scored by the event's unix time, so a late event
lands in its place, a retried one changes nothing, and the newest ``cap`` are
kept (the layout is ``contract.histories``). ``hmpps publish`` seeds histories from a
bundle without ever displacing newer actions; ``POST /events`` appends here, one round
trip per batch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from contract import keys
from contract.constants import EVENT_DEDUPE_TTL_S, EVENTS_STREAM_MAXLEN
from contract.events import Event
from contract.redis_client import AsyncRedis


@dataclass
class AppendResult:
    accepted: int = 0
    duplicates: int = 0
    history_appends: int = 0
    unknown_products: int = 0
    accepted_types: Counter[str] = field(default_factory=Counter)


def event_json(e: Event) -> str:
    return json.dumps({k: v for k, v in e.__dict__.items() if v is not None}, separators=(",", ":"))


async def append_events(client: AsyncRedis, events: Iterable[Event], history_types: frozenset[str],
                        version: str | None, cap: int, history_ttl_s: int) -> AppendResult:
    """Record a batch: every new event into the stream, the history types into their users' histories.

    Two pipelined round trips, each command on one key, so it runs on Redis Cluster as on one Redis:
    which events are new (their seen markers), then for those the stream entry, the marker, and
    whether the product is known; and for every history-type event ``ZADD NX`` of its member
    (idempotent by itself: a retried event finds its member there), trimmed to the newest ``cap``.
    A batch that fails midway is safe to retry: the stream write comes before the marker, so a
    retry can repeat a stream entry (readers dedupe by event id) but never lose one.
    """
    batch: list[Event] = []
    seen_in_batch: set[str] = set()
    dup_in_batch = 0
    for e in events:
        if e.event_id in seen_in_batch:
            dup_in_batch += 1
            continue
        seen_in_batch.add(e.event_id)
        batch.append(e)
    out = AppendResult(duplicates=dup_in_batch)
    if not batch:
        return out
    pipe = client.pipeline(transaction=False)
    for e in batch:
        pipe.exists(keys.event_seen(e.event_id))
    known_before = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    plan: list[tuple[Event, bool, bool]] = []  # event, new, goes into history
    for e, was_seen in zip(batch, known_before, strict=True):
        new = not was_seen
        in_history = e.type in history_types
        if new:
            pipe.xadd(keys.EVENTS_STREAM, {"e": event_json(e)}, maxlen=EVENTS_STREAM_MAXLEN, approximate=True)
            pipe.set(keys.event_seen(e.event_id), "1", ex=EVENT_DEDUPE_TTL_S)
            if version:
                pipe.exists(keys.product(version, e.product_id))
        if in_history:
            hk = keys.user_history(e.user_id)
            pipe.zadd(hk, {keys.history_member(e.event_id, e.product_id): e.timestamp}, nx=True)
            pipe.zremrangebyrank(hk, 0, -(cap + 1))
            if history_ttl_s > 0:
                pipe.expire(hk, history_ttl_s)
        plan.append((e, new, in_history))
    res = iter(await pipe.execute())
    for e, new, in_history in plan:
        known = True
        if new:
            next(res)  # xadd
            next(res)  # set
            if version:
                known = bool(next(res))
        added = 0
        if in_history:
            added = int(next(res))
            next(res)  # trim
            if history_ttl_s > 0:
                next(res)
        if not new:
            out.duplicates += 1
            continue
        out.accepted += 1
        out.accepted_types[e.type] += 1
        out.history_appends += int(added > 0)
        out.unknown_products += int(bool(version) and not known)
    return out
