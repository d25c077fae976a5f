"""POST /v1/rerank and /v2/rerank: the Cohere/Jina shape over the same request path as /rerank.

The documents become /rerank candidates (``service.core.documents``); free text is encoded by
the bundle's product encoder (cached) before the request budget starts, within
``HMPPS_TEXT_BUDGET_MS``. Then the request goes through ``serve_rerank`` like any /rerank:
the user's arm, fail-open, metrics and the served log are the same.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.compat import CompatRerankRequest, CompatRerankResponse, CompatResult
from service.api.deps import State
from service.api.handler import serve_rerank
from service.api.schemas import Candidate, RerankRequest
from service.core.documents import DocumentStore, as_documents
from service.infra import metrics as m

router = APIRouter(tags=["rerank (Cohere/Jina shape)"])
ANONYMOUS = "anonymous"


@router.post("/v1/rerank", response_model=CompatRerankResponse,
             summary="Rerank documents, Cohere v1 / Jina shape (product ids or free text)")
async def rerank_v1(body: CompatRerankRequest, state: State) -> Response:
    return await _rerank(body, state, "1")


@router.post("/v2/rerank", response_model=CompatRerankResponse,
             summary="Rerank documents, Cohere v2 shape (product ids or free text)")
async def rerank_v2(body: CompatRerankRequest, state: State) -> Response:
    return await _rerank(body, state, "2")


def _invalid(msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", "documents"), "msg": msg, "type": "value_error"}])


async def _rerank(body: CompatRerankRequest, state: State, api_version: str) -> Response:
    if len(body.documents) > state.settings.max_candidates:
        raise _invalid(f"{len(body.documents)} documents sent, at most {state.settings.max_candidates} "
                       "(HMPPS_MAX_CANDIDATES)")
    try:
        docs = as_documents(body.documents, body.rank_fields)
    except ValueError as e:
        raise _invalid(str(e)) from None
    ids = [d.candidate_id for d in docs]
    if len(set(ids)) != len(ids):
        raise _invalid("a product id appears twice")
    user = body.user or ANONYMOUS
    runtime = state.runtime  # one read, as /rerank
    serving = state.serving
    texts = [d.text for d in docs if d.text is not None]
    vectors: dict[str, dict[str, bytes]] = {}
    # each bundle the user's arm serves (two when it is interleaved) reads the texts in its own encoder's space
    for bundle in (runtime.arm_bundles(runtime.experiment.assign(user)) if texts else []):
        todo = state.texts.missing(bundle.version, texts)
        if todo:
            m.TEXT_ENCODED.inc(len(todo))
            try:  # past the budget the texts stay unscored (the caller's order); the thread still fills the cache
                async with asyncio.timeout(state.settings.text_budget_ms / 1000):
                    await anyio.to_thread.run_sync(state.texts.encode, bundle, todo, limiter=state.limiter,
                                                   abandon_on_cancel=True)
            except TimeoutError:
                m.TEXT_ENCODE_TIMEOUTS.inc()
        vectors[bundle.version] = state.texts.vectors(bundle.version, docs)
    if vectors:
        serving = serving.with_store(DocumentStore(serving.store, vectors))
    try:
        req = RerankRequest(user_id=user, query=body.query, candidates=[Candidate(product_id=i) for i in ids],
                            history=body.history if body.user else [])  # anonymous: no stored history
    except ValidationError as e:  # a rule of /rerank's the compat body's own checks missed: still the caller's 422
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    resp = await serve_rerank(req, runtime, serving, uuid.uuid4().hex)
    results = [CompatResult(index=r.original_rank - 1, relevance_score=0.0 if r.score is None else r.score,
                            document=_document(body.documents[r.original_rank - 1]) if body.return_documents else None)
               for r in resp.results]
    if body.top_n is not None:
        results = results[: body.top_n]
    out = CompatRerankResponse(id=resp.request_id, results=results, meta={
        "api_version": {"version": api_version}, "billed_units": {"search_units": 1},
        "hmpps": {"arm": resp.arm, "model_version": resp.model_version, "fallback": resp.fallback}})
    return Response(out.model_dump_json(exclude=None if body.return_documents else _NO_DOCUMENTS),
                    media_type="application/json")


_NO_DOCUMENTS: Any = {"results": {"__all__": {"document"}}}


def _document(d: str | dict[str, object]) -> dict[str, object]:
    return {"text": d} if isinstance(d, str) else d
