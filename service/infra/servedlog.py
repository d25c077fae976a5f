"""The served-rankings log, written in batches off the request path.

One ``XADD`` per response cost a task and a Redis round trip per request (10-20%
of a worker's throughput at saturation, measured with ``HMPPS_SERVED_LOG_SAMPLE``
0 vs 1). Records now queue in memory and one pipeline writes them every
``HMPPS_SERVED_LOG_FLUSH_MS`` (or sooner once ``BATCH`` are waiting). A write that
fails or times out is counted (``hmpps_served_log_failures_total``) and dropped,
never retried into the caller's latency; past ``MAX_PENDING`` queued records new
ones are dropped and counted the same way, so a Redis outage cannot grow memory.
Shutdown flushes what is queued. The writer stops on a flag, not on a cancel:
on Python 3.11 ``asyncio.wait_for`` can swallow a cancel that lands as its inner
wait completes, and a loop that relied on the cancel would then never end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.infra import metrics as m

log = logging.getLogger("hmpps.service")

BATCH = 256
MAX_PENDING = 20_000


class ServedLogWriter:
    def __init__(self, store: Any, flush_s: float, timeout_s: float):
        self.store = store
        self.flush_s = flush_s
        self.timeout_s = timeout_s
        self.pending: list[str] = []
        self._wake = asyncio.Event()
        self._closing = False

    def add(self, record: str) -> None:
        if len(self.pending) >= MAX_PENDING:
            m.SERVED_LOG_FAILURES.inc()
            return
        self.pending.append(record)
        if len(self.pending) >= BATCH:
            self._wake.set()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.log_served(batch)
            m.SERVED_LOGGED.inc(len(batch))
        except Exception as e:  # noqa: BLE001 - best effort, counted, never the caller's error
            m.SERVED_LOG_FAILURES.inc(len(batch))
            log.warning("could not log %d served rankings: %s", len(batch), e)

    def stop(self) -> None:
        """Ask ``run`` to return after its current flush (``close`` then flushes the rest)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        self.stop()
        await self.flush()
