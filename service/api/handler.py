"""One rerank request end to end: fetch, score, order, build the response; fail open on trouble.

The scoring itself (``service.core.scoring``) knows nothing of HTTP; this module
turns a ``RerankRequest`` into a ``RerankResponse`` around it, with the budget,
the fallbacks, the metrics and the served log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio
from redis.exceptions import RedisError

from contract.arms import Arm
from contract.constants import PASSTHROUGH
from contract.served import ServedItem, ServedRanking
from service.api.experiments import Shown, explore_order, interleave
from service.api.schemas import RequestExplain, RerankRequest, RerankResponse, Result, ResultExplain
from service.core.batching import MicroBatcher
from service.core.bundle import LoadedBundle
from service.core.runtime import Runtime
from service.core.scoring import Listed, RequestScorer, Scored, StudentScorer, finish, order, prepare
from service.infra import metrics as m
from service.infra.store import FeatureStore, Fetched

log = logging.getLogger("hmpps.service")


def _listed(req: RerankRequest) -> Listed:
    return Listed([c.product_id for c in req.candidates], [c.score for c in req.candidates])


def passthrough_results(req: RerankRequest, missing: list[bool] | None = None) -> list[Result]:
    return [Result(product_id=c.product_id, score=c.score, rank=i + 1, original_rank=i + 1,
                   missing_features=bool(missing and missing[i])) for i, c in enumerate(req.candidates)]


@dataclass
class InlineGate:
    """Whether a request may be scored on the event loop (no worker-thread hand-off).

    The request budget (``asyncio.timeout``) cannot interrupt a call running on the event loop,
    so inline scoring is allowed only while every such call stays under ``max_s``: the first one
    over it closes the gate for the life of the process, and every later request is scored in a
    worker thread, where a spent budget returns the caller's order on time. A request scored
    inline past its budget still answers the caller's order (``fallback: "timeout"``), late by
    at most that one call.
    """

    max_candidates: int  # 0: never inline
    max_s: float
    open: bool = True

    def admits(self, n_candidates: int) -> bool:
        return self.open and n_candidates <= self.max_candidates

    def observe(self, seconds: float) -> None:
        if seconds > self.max_s and self.open:
            self.open = False
            m.INLINE_CLOSED.inc()
            log.warning("an inline scoring call took %.1f ms (limit %.1f ms): scoring moves to worker threads",
                        seconds * 1000, self.max_s * 1000)


@dataclass(frozen=True)
class Serving:
    """What every rerank of this process shares, built once with the app state (``AppState.serving``)."""

    store: FeatureStore
    limiter: anyio.CapacityLimiter  # worker threads for scoring
    budget_s: float  # fail open past this
    tail_ttl_s: int
    scorer: RequestScorer
    spawn: Callable[[Coroutine[Any, Any, None]], None]  # best-effort work after the response
    served_log_sample: float = 0.0  # share of responses logged to the served stream
    log_served: Callable[[str], None] | None = None  # queues a served record (service.infra.servedlog)
    inline: InlineGate = field(default_factory=lambda: InlineGate(0, 0.0))  # default: always a worker thread
    batcher: MicroBatcher | None = None  # inline student scoring shares ONNX calls across requests


    def with_store(self, store: FeatureStore) -> Serving:
        """The same, reading features through ``store`` (one request's free-text documents, /v1/rerank)."""
        return replace(self, store=store)


@dataclass(frozen=True)
class RequestContext:
    """One rerank: its id, the user's arm and that arm's bundle, and what every request shares."""

    request_id: str
    arm: Arm
    bundle: LoadedBundle | None  # None: the passthrough (control) arm
    serving: Serving


async def serve_rerank(req: RerankRequest, runtime: Runtime, serving: Serving, request_id: str) -> RerankResponse:
    """One request as every rerank route serves it: the user's arm, the rerank, its metrics."""
    t0 = time.perf_counter()
    arm = runtime.experiment.assign(req.user_id)
    m.CANDIDATES.observe(len(req.candidates))  # once per request, also when an interleaved arm ranks it twice
    try:
        if arm.interleaved:
            sides = [RequestContext(request_id, arm, runtime.bundles[slot], serving) for slot, _ in arm.slots()]
            resp, shown = await interleave(req, sides, [team for team, _ in arm.teams], handle_rerank)
        else:
            resp, shown = await handle_rerank(req, RequestContext(request_id, arm, runtime.bundles[arm.name], serving))
        log_served(req, resp, shown, serving)
    except BaseException:
        m.REQUESTS.labels(arm.name, "error").inc()
        raise
    m.REQUESTS.labels(arm.name, "fallback" if resp.fallback else "ok").inc()
    m.LATENCY.labels(arm.name).observe(time.perf_counter() - t0)
    return resp


def log_served(req: RerankRequest, resp: RerankResponse, shown: Shown, serving: Serving) -> None:
    """(Sampled) queue the served ranking for the served log, written after the response."""
    if serving.log_served is not None and serving.served_log_sample > 0 and (
            serving.served_log_sample >= 1 or random.random() < serving.served_log_sample):
        serving.log_served(served_record(req, resp, shown))


def served_record(req: RerankRequest, resp: RerankResponse, shown: Shown | None = None) -> str:
    # the candidates the caller received (top_n trims them), in served order
    shown = shown or Shown()
    items = tuple(ServedItem(r.product_id, r.original_rank - 1, r.score, req.candidates[r.original_rank - 1].score,
                             shown.propensity.get(r.product_id), shown.team.get(r.product_id))
                  for r in resp.results)
    return ServedRanking(resp.request_id, req.user_id, req.query, resp.arm, resp.model_version, resp.fallback,
                         time.time(), items, len(req.candidates), shown.policy,
                         shown.slate(len(items)), shown.teams).to_json()


async def handle_rerank(req: RerankRequest, ctx: RequestContext) -> tuple[RerankResponse, Shown]:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = ctx.bundle
    if bundle is None:
        return _response(req, ctx.request_id, ctx.arm.name, PASSTHROUGH, None, passthrough_results(req), t0,
                         timings), Shown()

    ids = [c.product_id for c in req.candidates]
    fallback: str | None = None
    scored: Scored | None = None
    fetched: Fetched | None = None
    try:
        async with asyncio.timeout(ctx.serving.budget_s):
            fetched = await ctx.serving.store.fetch(bundle.version, req.user_id, req.query, ids, req.history,
                                            bundle.history_cap, req.return_summaries or ctx.serving.scorer.needs_summaries,
                                            req.explain)
            timings["redis"] = fetched.seconds * 1000
            m.STAGE.labels("redis").observe(fetched.seconds)
            if ctx.serving.scorer.inline and fetched.query is not None and not req.explain \
                    and ctx.serving.inline.admits(len(ids)):
                t_call = time.perf_counter()
                if ctx.serving.batcher is not None and isinstance(ctx.serving.scorer, StudentScorer):
                    scored, blocked = await _score_batched(ctx.serving.batcher, bundle, req, fetched)
                else:
                    scored = ctx.serving.scorer(bundle, req.query, fetched, _listed(req))
                    blocked = time.perf_counter() - t_call
                done = time.perf_counter()
                ctx.serving.inline.observe(blocked)
                if done - t0 > ctx.serving.budget_s:
                    raise TimeoutError  # the budget could not interrupt the call: answer as if it had
            else:
                scored = await anyio.to_thread.run_sync(ctx.serving.scorer, bundle, req.query, fetched, _listed(req),
                                                        req.explain, limiter=ctx.serving.limiter,
                                                        abandon_on_cancel=True)  # the budget must not wait for it
    except TimeoutError:
        fallback = "timeout"
    except (RedisError, ConnectionError, OSError) as e:
        fallback = "redis_unavailable"
        log.warning("redis failed: %s", e)
    except Exception:  # noqa: BLE001 - fail open on anything else in the scoring path (the model), and count it
        fallback = "model_error"
        log.exception("rerank failed open (model_error)")

    if scored is not None:
        for stage, sec in scored.stages.items():
            m.STAGE.labels(stage).observe(sec)
            timings[stage] = sec * 1000
        n_missing = sum(s is None for s in scored.scores)
        if n_missing:
            m.FEATURE_MISSES.labels("product").inc(n_missing)
        if scored.encoded_query is not None:
            m.FEATURE_MISSES.labels("query").inc()
            # after the response: the next request for this query skips the encoder
            ctx.serving.spawn(_cache_tail_query(ctx, bundle.version, req.query, scored.encoded_query))
        if n_missing == len(ids):
            fallback = "no_features"
    if fallback is not None or scored is None:
        fallback = fallback or "no_features"
        m.FALLBACKS.labels(fallback).inc()
        missing = [s is None for s in scored.scores] if scored is not None else None
        return _response(req, ctx.request_id, ctx.arm.name, bundle.version, fallback,
                         passthrough_results(req, missing), t0, timings), Shown()

    summaries = fetched.summaries if fetched is not None and req.return_summaries else []
    results = []
    ranked, shown = order(scored.scores), Shown()
    if ctx.arm.explore is not None:
        ranked, shown = explore_order(scored.scores, ranked, ids, ctx.arm.explore, ctx.arm.name, ctx.request_id)
    for rank, i in enumerate(ranked, 1):
        s = scored.scores[i]
        why = (ResultExplain(selected_history=scored.selected[i], features=_source(s, fetched, i),
                             signals=scored.signals[i] if scored.signals else {})
               if scored.selected is not None else None)
        results.append(Result(product_id=ids[i], score=None if s is None else round(s, 6), rank=rank,
                              original_rank=i + 1, missing_features=s is None,
                              summary=summaries[i] if summaries else None, explain=why))
    explain = RequestExplain(history=scored.history_ids or []) if req.explain else None
    return _response(req, ctx.request_id, ctx.arm.name, bundle.version, None, results, t0, timings, explain), shown


async def _score_batched(batcher: MicroBatcher, bundle: LoadedBundle, req: RerankRequest,
                         fetched: Fetched) -> tuple[Scored, float]:
    """Score through the batcher; also the seconds this request held the event loop (not its wait)."""
    t = time.perf_counter()
    p = prepare(bundle, req.query, fetched, _listed(req))
    blocked = time.perf_counter() - t
    if p.inputs is None:
        return p.scored, blocked
    logits, call_s = await batcher.logits(bundle, p.inputs)
    t = time.perf_counter()
    scored = finish(bundle, p, logits, call_s)
    return scored, blocked + call_s + time.perf_counter() - t


def _source(score: float | None, fetched: Fetched | None, i: int) -> Literal["offline", "encoded", "missing"]:
    if score is None:
        return "missing"
    return "encoded" if fetched is not None and fetched.sources and fetched.sources[i] == "encoded" else "offline"


async def _cache_tail_query(ctx: RequestContext, version: str, query: str, vector: bytes) -> None:
    try:
        async with asyncio.timeout(ctx.serving.budget_s):
            await ctx.serving.store.cache_query(version, query, vector, ctx.serving.tail_ttl_s)
    except Exception as e:  # noqa: BLE001 - best effort, counted
        m.TAIL_CACHE_FAILURES.inc()
        log.warning("could not cache tail query: %s", e)


def _response(req: RerankRequest, request_id: str, arm: str, version: str, fallback: str | None,
              results: list[Result], t0: float, timings: dict[str, float],
              explain: RequestExplain | None = None) -> RerankResponse:
    if req.top_n is not None:
        results = results[: req.top_n]
    timings["total"] = (time.perf_counter() - t0) * 1000
    return RerankResponse(request_id=request_id, arm=arm, model_version=version, fallback=fallback, results=results,
                          timings_ms={k: round(v, 3) for k, v in timings.items()}, explain=explain)
