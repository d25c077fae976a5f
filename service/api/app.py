"""The FastAPI application: ``create_app(settings)`` assembles the parts and does nothing else.

Everything stateful (Redis clients, ONNX sessions, the health loop) opens in
``lifespan`` and closes after it; nothing loads at import time.

    runtime.py   arms and loaded bundles        state.py   AppState, health loop
    rerank.py    one request, fail-open          routes/    the HTTP API by area
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from contract.errors import HmppsError, http_status
from service.api.limits import LimitsMiddleware
from service.api.routes import admin, compat, events, feedback, ops, rerank
from service.api.schemas import ErrorBody
from service.api.state import AppState, open_redis
from service.api.warmup import warm_from_traffic
from service.core.runtime import load_runtime
from service.core.scoring import STUDENT, RequestScorer
from service.infra.settings import Settings
from service.infra.store import feature_store

log = logging.getLogger("hmpps.service")


def create_app(settings: Settings | None = None, scorer: RequestScorer | None = None) -> FastAPI:
    """The service. ``scorer`` replaces the student for benchmarks of peers on the same path."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        handle, aclient, wclient, clustered = await anyio.to_thread.run_sync(open_redis, settings)
        try:
            runtime = await anyio.to_thread.run_sync(load_runtime, settings)
        except BaseException:
            await _close_redis(handle, aclient, wclient)
            raise
        state = AppState(settings, handle, aclient, wclient, feature_store(aclient, clustered, wclient), runtime,
                         scorer or STUDENT)
        app.state.hmpps = state
        state.gauges.set(runtime.versions(), {a.name: a.weight for a in runtime.experiment.arms})
        if settings.publish_missing:
            await anyio.to_thread.run_sync(state.publish_missing)
        state.warmed = await warm_from_traffic(runtime, state.store, settings.warmup_requests)
        state.warm = True
        await state.check_health()
        health = asyncio.create_task(state.health_loop())
        served_log = asyncio.create_task(state.served_log.run())
        try:
            yield
        finally:
            state.stopping = True
            state.served_log.stop()
            await _stop_tasks(health, served_log)
            await state.drain()
            await state.served_log.close()  # what was queued when the service stopped
            await _close_redis(state.redis, state.aclient, state.wclient)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(
        title="HMPPS Rerank",
        version="0.1.0",
        summary="Personalized reranking of search candidates with an ONNX student distilled from a multimodal LLM.",
        lifespan=lifespan,
        docs_url="/docs" if settings.expose_docs else None,
        redoc_url="/redoc" if settings.expose_docs else None,
        openapi_url="/openapi.json" if settings.expose_docs else None,
        responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
                   429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    app.add_middleware(LimitsMiddleware, max_in_flight=settings.max_in_flight, max_body_bytes=settings.max_body_bytes,
                       limited_paths=("/rerank", "/v1/rerank", "/v2/rerank", "/feedback", "/events"),
                       admin_max_body_bytes=settings.admin_max_body_bytes)
    for kind in (HmppsError, RequestValidationError):
        app.add_exception_handler(kind, error_body)  # type: ignore[arg-type]
    for router in (rerank.router, compat.router, feedback.router, events.router, ops.router, admin.router):
        app.include_router(router)
    return app


async def error_body(request: Request, exc: HmppsError | RequestValidationError) -> JSONResponse:
    """The one exception handler: domain and validation errors to HTTP in one shape (``ErrorBody``),
    no internals leaked."""
    if isinstance(exc, RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return JSONResponse(status_code=422, content={"error": "ValidationError", "detail": detail, "errors": errors})
    return JSONResponse(status_code=http_status(exc), content={"error": type(exc).__name__, "detail": str(exc)})


async def _stop_tasks(*tasks: asyncio.Task[None], timeout_s: float = 5.0) -> None:
    """Cancel the background loops and wait a bounded time: shutdown must never hang on one.

    Both loops also stop on their flags (``state.stopping``, ``ServedLogWriter.stop``), so
    a cancel that Python 3.11's ``wait_for``/``timeout`` swallows still ends them.
    """
    for task in tasks:
        task.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
    for task in stuck:
        log.error("background task %s did not stop within %.0f s; leaving it", task.get_coro(), timeout_s)


async def _close_redis(handle: object, *clients: object) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.aclose()  # type: ignore[attr-defined]
    if handle is not None:
        await anyio.to_thread.run_sync(handle.close)  # type: ignore[attr-defined]


def app_factory() -> FastAPI:
    """For ``uvicorn --factory service.api.app:app_factory``: settings from the environment."""
    return create_app(Settings())
