"""The feature store seam and its Redis implementation.

One request needs candidate features, the user's history and that history's
features, and the query's features. On one Redis a server-side Lua script
gathers all of it in one round trip (``RedisFeatureStore``). On Redis Cluster
those keys live in many slots (a catalogue spreads over every shard), so
``ClusterFeatureStore`` reads them as one pipeline that the cluster client
splits by node and sends to the nodes in parallel; a second pipeline reads the
history's features when the history comes from Redis. Same answers, two round
trips instead of one; MOVED and ASK are followed by the client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract import keys
from contract.constants import FEEDBACK_STREAM_MAXLEN, SERVED_STREAM_MAXLEN
from contract.events import Event
from contract.redis_client import AsyncRedis
from contract.served import FIELD as SERVED_FIELD
from service.infra.histories import AppendResult, append_events

# Single node only: its keys are built inside (one slot per product), which Redis Cluster refuses.
# ARGV: product prefix, summary prefix, product-meta prefix, per-product key suffix, query key, tail-query key,
#       user key, history cap, wants ("s": summaries, "e": each candidate's feature source),
#       n given history (-1: read from Redis), history ids..., candidate ids...
_FETCH = """
local pp, sp, mp, sfx, qk, qck, uk = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local cap, want, nh = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local hist = {}
local i = 11
if nh < 0 then
  -- the live history: members are "event_id \\31 product_id", newest first
  for j, m in ipairs(redis.call('ZREVRANGE', uk, 0, cap - 1)) do
    local sep = string.find(m, '\\31', 1, true)
    hist[j] = sep and string.sub(m, sep + 1) or m
  end
else
  for j = 1, nh do hist[j] = ARGV[i + j - 1] end
  i = i + nh
end
local cands = {}
for j = i, #ARGV do cands[#cands + 1] = ARGV[j] end
local function mget(prefix, ids)
  if #ids == 0 then return {} end
  local ks = {}
  for j, id in ipairs(ids) do ks[j] = prefix .. id .. sfx end
  return redis.call('MGET', unpack(ks))
end
local q = redis.call('GET', qk)
local tail = 0
if not q then q = redis.call('GET', qck); tail = 1 end
local sm = {}
if string.find(want, 's', 1, true) then sm = mget(sp, cands) end
local src = {}
if string.find(want, 'e', 1, true) then
  for j, id in ipairs(cands) do src[j] = redis.call('HGET', mp .. id .. sfx, 'source') end
end
return {q or false, tail, mget(pp, cands), hist, mget(pp, hist), sm, src}
"""


@dataclass
class Fetched:
    query: bytes | None
    query_from_cache: bool
    candidates: list[bytes | None]
    history_ids: list[str]  # most recent first
    history: list[bytes | None]
    summaries: list[str | None] = field(default_factory=list)
    seconds: float = 0.0
    sources: list[str | None] = field(default_factory=list)  # per candidate, with explain: "encoded" or None


class FeatureStore(Protocol):
    async def fetch(self, version: str, user_id: str, query: str, product_ids: list[str],
                    history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                    want_sources: bool = False) -> Fetched: ...

    async def cache_query(self, version: str, query: str, vector: bytes, ttl_s: int) -> None: ...

    async def version_complete(self, version: str) -> bool: ...

    async def published_at(self, version: str) -> float | None: ...

    async def upserted_at(self, version: str) -> float | None: ...

    async def ping(self) -> bool: ...

    async def add_feedback(self, events: list[dict[str, Any]]) -> None: ...

    async def log_served(self, records: list[str]) -> None: ...

    async def recent_served(self, count: int) -> list[str]: ...

    async def append_events(self, events: list[Event], history_types: frozenset[str], version: str | None,
                            cap: int, history_ttl_s: int) -> AppendResult: ...


def _str(b: Any) -> str:
    return str(keys.as_text(b))


class RedisFeatureStore:
    """``client`` serves the request path's reads; ``writer`` (default: the same) the writes that must not be lost."""

    def __init__(self, client: AsyncRedis, writer: AsyncRedis | None = None):
        self.client = client
        self.writer = writer if writer is not None else client
        self._fetch = client.register_script(_FETCH)

    async def fetch(self, version: str, user_id: str, query: str, product_ids: list[str],
                    history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                    want_sources: bool = False) -> Fetched:
        t = time.perf_counter()
        given = history_ids[:history_cap] if history_ids is not None else None
        wants = ("s" if want_summaries else "") + ("e" if want_sources else "") or "-"
        pp, sfx = keys.split_key(keys.product(version, ""))
        args = [pp, keys.split_key(keys.summary(version, ""))[0], keys.split_key(keys.product_meta(version, ""))[0],
                sfx, keys.query(version, query), keys.tail_query(version, query), keys.user_history(user_id),
                history_cap, wants, -1 if given is None else len(given), *(given or []), *product_ids]
        q, tail, cands, hist, hist_feats, summ, src = await self._fetch(keys=[], args=args)
        return Fetched(
            query=q or None, query_from_cache=bool(q) and bool(tail),
            candidates=[c or None for c in cands],
            history_ids=[_str(h) for h in hist], history=[h or None for h in hist_feats],
            summaries=[_str(s) if s else None for s in summ], seconds=time.perf_counter() - t,
            sources=[_str(s) if s else None for s in src],
        )

    async def cache_query(self, version: str, query: str, vector: bytes, ttl_s: int) -> None:
        await self.client.set(keys.tail_query(version, query), vector, ex=ttl_s)

    async def version_complete(self, version: str) -> bool:
        return bool(await self.client.exists(keys.complete(version)))

    async def upserted_at(self, version: str) -> float | None:
        at = await self.client.get(keys.upserted_at(version))
        return None if at is None else float(at)

    async def published_at(self, version: str) -> float | None:
        """When the version's publish completed (its ``complete`` marker), None while incomplete."""
        marker = await self.client.get(keys.complete(version))
        return None if marker is None else float(json.loads(marker).get("published_at", 0.0))

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def add_feedback(self, events: list[dict[str, Any]]) -> None:
        rows = [{"e": json.dumps(e, separators=(",", ":"))} for e in events]
        await self._xadd_all(keys.FEEDBACK_STREAM, rows, FEEDBACK_STREAM_MAXLEN)

    async def log_served(self, records: list[str]) -> None:
        await self._xadd_all(keys.SERVED_STREAM, [{SERVED_FIELD: r} for r in records], SERVED_STREAM_MAXLEN)

    async def recent_served(self, count: int) -> list[str]:
        """The newest ``count`` served-ranking records, newest first (what warm-up replays)."""
        rows = await self.client.xrevrange(keys.SERVED_STREAM, count=count)
        return [_str(fields[SERVED_FIELD.encode()]) for _, fields in rows if SERVED_FIELD.encode() in fields]

    async def _xadd_all(self, stream: str, rows: list[dict[str, str]], maxlen: int) -> None:
        """One pipeline of XADDs, sent again once if the connection was dead.

        After a Redis restart or failover the first pipeline on a pooled connection fails with
        "Connection closed by server" (redis-py 8 does not retry it; measured with a restarted
        redis-server), so the first feedback after the restart would answer 503. The retry goes
        out on a fresh connection. Delivery is at least once: a reply lost after Redis applied
        the writes repeats them, which the stream's readers tolerate (feedback folds into flags
        per request id, and a repeated served record is dropped by request id).
        """
        from redis.exceptions import ConnectionError as RedisConnectionError

        for attempt in (0, 1):
            pipe = self.writer.pipeline(transaction=False)
            for row in rows:
                pipe.xadd(stream, row, maxlen=maxlen, approximate=True)
            try:
                await pipe.execute()
                return
            except RedisConnectionError:
                if attempt:
                    raise

    async def append_events(self, events: list[Event], history_types: frozenset[str], version: str | None,
                            cap: int, history_ttl_s: int) -> AppendResult:
        return await append_events(self.writer, events, history_types, version, cap, history_ttl_s)


class ClusterFeatureStore(RedisFeatureStore):
    """The same store on Redis Cluster: per-slot reads in parallel instead of one script."""

    def __init__(self, client: AsyncRedis, writer: AsyncRedis | None = None):
        self.client = client
        self.writer = writer if writer is not None else client

    async def fetch(self, version: str, user_id: str, query: str, product_ids: list[str],
                    history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                    want_sources: bool = False) -> Fetched:
        from redis.exceptions import ClusterError

        t = time.perf_counter()
        try:
            out = await self._fetch_once(version, user_id, query, product_ids, history_ids, history_cap,
                                         want_summaries, want_sources)
        except ClusterError:
            # redis-py's async cluster client sends ASKING and the redirected command on two pooled
            # connections; under concurrent requests they can split during a slot move and the
            # redirects run out ("TTL exhausted"). Once more, within the request's budget.
            out = await self._fetch_once(version, user_id, query, product_ids, history_ids, history_cap,
                                         want_summaries, want_sources)
        out.seconds = time.perf_counter() - t
        return out

    async def _fetch_once(self, version: str, user_id: str, query: str, product_ids: list[str],
                          history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                          want_sources: bool) -> Fetched:
        given = history_ids[:history_cap] if history_ids is not None else None
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.query(version, query))
        pipe.get(keys.tail_query(version, query))
        if given is None:
            pipe.zrevrange(keys.user_history(user_id), 0, history_cap - 1)
        for pid in product_ids:
            pipe.get(keys.product(version, pid))
        if want_summaries:
            for pid in product_ids:
                pipe.get(keys.summary(version, pid))
        if want_sources:
            for pid in product_ids:
                pipe.hget(keys.product_meta(version, pid), "source")
        res = list(await pipe.execute())
        q, tail = res[0], res[1]
        at = 2
        if given is None:
            hist = [keys.history_product(m) for m in res[2]]
            at = 3
        else:
            hist = list(given)
        n = len(product_ids)
        cands = res[at:at + n]
        summ = res[at + n:at + 2 * n] if want_summaries else []
        src = res[at + (2 if want_summaries else 1) * n:] if want_sources else []
        hist_feats: list[Any] = []
        if hist:
            hp = self.client.pipeline(transaction=False)
            for pid in hist:
                hp.get(keys.product(version, pid))
            hist_feats = list(await hp.execute())
        return Fetched(
            query=q or tail or None, query_from_cache=not q and bool(tail),
            candidates=[c or None for c in cands],
            history_ids=[_str(h) for h in hist], history=[h or None for h in hist_feats],
            summaries=[_str(x) if x else None for x in summ], sources=[_str(x) if x else None for x in src],
        )


def feature_store(client: AsyncRedis, cluster: bool, writer: AsyncRedis | None = None) -> RedisFeatureStore:
    return ClusterFeatureStore(client, writer) if cluster else RedisFeatureStore(client, writer)
