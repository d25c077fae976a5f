"""Liveness, readiness, what is loaded, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.deps import State
from service.infra import metrics as m

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: warmed up, Redis reachable, bundles published")
async def readyz(state: State) -> JSONResponse:
    body = {"ready": state.ready, "warm": state.warm, "warmed": state.warmed, "redis": state.redis_ok,
            "published": state.published}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/info", summary="Experiment, arms and loaded bundle versions")
async def info(state: State) -> dict[str, Any]:
    rt = state.runtime
    arms = [{"name": a.name, "weight": a.weight}
            | ({"interleave": [t for t, _ in a.teams]} if a.interleaved else {})
            | ({"explore": a.explore.describe()} if a.explore is not None else {}) for a in rt.experiment.arms]
    return {"experiment": rt.experiment.name, "arms": arms, "versions": rt.versions(), "scorer": state.scorer.name,
            "loaded_at": rt.loaded_at}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    body, ctype = m.exposition()
    return Response(body, media_type=ctype)
