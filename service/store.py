"""The feature store seam and its Redis implementation.

One request needs candidate features, the user's history and that history's
features, and the query's features. A server-side Lua script gathers all of
it in one round trip. (On Redis Cluster these keys span slots; a cluster
deployment shards by hash tag per version and calls the script per shard, see
the README's production notes.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract import keys
from contract.constants import FEEDBACK_STREAM_MAXLEN, SERVED_STREAM_MAXLEN
from contract.events import Event
from contract.served import FIELD as SERVED_FIELD
from service.histories import APPEND, AppendResult, append_events

# ARGV: product prefix, summary prefix, product-meta prefix, query key, tail-query key, user key, history cap,
#       wants ("s": summaries, "e": each candidate's feature source), n given history (-1: read from Redis),
#       history ids..., candidate ids...
_FETCH = """
local pp, sp, mp, qk, qck, uk = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cap, want, nh = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local hist = {}
local i = 10
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
  for j, id in ipairs(ids) do ks[j] = prefix .. id end
  return redis.call('MGET', unpack(ks))
end
local q = redis.call('GET', qk)
local tail = 0
if not q then q = redis.call('GET', qck); tail = 1 end
local sm = {}
if string.find(want, 's', 1, true) then sm = mget(sp, cands) end
local src = {}
if string.find(want, 'e', 1, true) then
  for j, id in ipairs(cands) do src[j] = redis.call('HGET', mp .. id, 'source') end
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

    async def log_served(self, record: str) -> None: ...

    async def append_events(self, events: list[Event], history_types: frozenset[str], version: str | None,
                            cap: int, history_ttl_s: int) -> AppendResult: ...


def _str(b: Any) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


class RedisFeatureStore:
    def __init__(self, client: Any):
        self.client = client
        self._fetch = client.register_script(_FETCH)
        self._append = client.register_script(APPEND)

    async def fetch(self, version: str, user_id: str, query: str, product_ids: list[str],
                    history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                    want_sources: bool = False) -> Fetched:
        t = time.perf_counter()
        given = history_ids[:history_cap] if history_ids is not None else None
        wants = ("s" if want_summaries else "") + ("e" if want_sources else "") or "-"
        args = [keys.product(version, ""), keys.summary(version, ""), keys.product_meta(version, ""),
                keys.query(version, query), keys.tail_query(version, query), keys.user_history(user_id), history_cap,
                wants, -1 if given is None else len(given), *(given or []), *product_ids]
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
        pipe = self.client.pipeline(transaction=False)
        for e in events:
            pipe.xadd(keys.FEEDBACK_STREAM, {"e": json.dumps(e, separators=(",", ":"))}, maxlen=FEEDBACK_STREAM_MAXLEN, approximate=True)
        await pipe.execute()

    async def log_served(self, record: str) -> None:
        await self.client.xadd(keys.SERVED_STREAM, {SERVED_FIELD: record}, maxlen=SERVED_STREAM_MAXLEN,
                               approximate=True)

    async def append_events(self, events: list[Event], history_types: frozenset[str], version: str | None,
                            cap: int, history_ttl_s: int) -> AppendResult:
        return await append_events(self.client, self._append, events, history_types, version, cap, history_ttl_s)
