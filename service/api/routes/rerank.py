"""POST /rerank."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from service.api.deps import State
from service.api.handler import serve_rerank
from service.api.schemas import RerankRequest, RerankResponse

router = APIRouter(tags=["rerank"])


@router.post("/rerank", response_model=RerankResponse, summary="Reorder a query's candidates for this user")
async def rerank(req: RerankRequest, state: State) -> Response:
    if len(req.candidates) > state.settings.max_candidates:  # the configured limit, as a validation error
        raise RequestValidationError([{"loc": ("body", "candidates"), "type": "too_long",
                                       "msg": f"{len(req.candidates)} candidates sent, at most "
                                              f"{state.settings.max_candidates} (HMPPS_MAX_CANDIDATES)"}])
    # one read of the runtime: a reload in flight does not change this request's
    resp = await serve_rerank(req, state.runtime, state.serving, req.request_id or uuid.uuid4().hex)
    # built from validated models already: serialize once, skip FastAPI's re-validation;
    # the explain fields appear only when asked for
    return Response(resp.model_dump_json(exclude=None if req.explain else _NO_EXPLAIN), media_type="application/json")


_NO_EXPLAIN: Any = {"explain": True, "results": {"__all__": {"explain"}}}
