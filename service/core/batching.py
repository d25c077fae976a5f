"""Cross-request batching: concurrent requests' student inputs scored in one ONNX call.

The first request to arrive opens a batch and waits at most ``max_delay_s`` for others (a
batch also closes at ``max_rows`` rows); then one ``InferenceSession.run`` scores every row
and each request gets its own rows back. The student scores each row on its own (no op mixes
rows), so a request's scores do not depend on its neighbours. It runs on the event loop, as
inline scoring does: a batch of a few requests at K=10 is a sub-millisecond call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from service.core.bundle import LoadedBundle
from service.infra import metrics as m


@dataclass
class _Batch:
    bundle: LoadedBundle
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    futures: list[asyncio.Future[tuple[np.ndarray, float]]] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    def __init__(self, max_delay_s: float, max_rows: int = 512):
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self._open: dict[int, _Batch] = {}  # per bundle (its scorer session)

    async def logits(self, bundle: LoadedBundle, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """This request's (K, 2) logits, and the seconds of the ONNX call it shared."""
        loop = asyncio.get_running_loop()
        key = id(bundle)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(bundle)
            batch.timer = loop.call_later(self.max_delay_s, self._run, key)
        fut: asyncio.Future[tuple[np.ndarray, float]] = loop.create_future()
        batch.parts.append(inputs)
        batch.futures.append(fut)
        batch.rows += len(next(iter(inputs.values())))
        if batch.rows >= self.max_rows:
            self._run(key)
        return await fut

    def _run(self, key: int) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        live = [(p, f) for p, f in zip(batch.parts, batch.futures, strict=True) if not f.done()]  # cancelled: gone
        if not live:
            return
        t = time.perf_counter()
        try:
            joined = {name: np.concatenate([p[name] for p, _ in live]) for name in live[0][0]}
            out = batch.bundle.scorer.logits(joined)
        except Exception as e:  # noqa: BLE001 - each request fails open on its own
            for _, f in live:
                f.set_exception(e)
            return
        seconds = time.perf_counter() - t
        m.BATCH_REQUESTS.observe(len(live))
        at = 0
        for p, f in live:
            n = len(next(iter(p.values())))
            f.set_result((out[at: at + n], seconds))
            at += n
