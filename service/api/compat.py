"""The rerank API shape of Cohere and Jina (``query``, ``documents``, ``top_n``, ``return_documents``
in; ``results`` of ``index`` and ``relevance_score`` out), as request and response models.

What the official clients send is accepted as they send it: the v1 fields (``rank_fields``,
``max_chunks_per_doc``) and the v2 ones (``max_tokens_per_doc``, ``priority``) are read and ignored
where a reranker of product features has no use for them. ``user`` and ``history`` are this
service's extensions (the SDKs pass them through ``additional_body_parameters``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import QUERY, RequestBody, history_ids, not_blank


class CompatRerankRequest(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model": "hmpps", "query": "kitchen coffee makers", "user": "u42", "top_n": 3, "return_documents": True,
        "documents": ["p1", {"id": "p2"}, "Stainless steel drip coffee maker, 12 cups", {"text": "Espresso machine"}],
    }]})

    model: str | None = Field(None, max_length=200, description="accepted for compatibility; the arm's bundle ranks")
    query: str = QUERY
    documents: list[str | dict[str, Any]] = Field(
        min_length=1, max_length=1000,
        description="product ids (a string without whitespace, or {\"id\": ...}) or free text (any other string, "
                    "or {\"text\": ...}); at most HMPPS_MAX_CANDIDATES")
    top_n: int | None = Field(None, ge=1, le=1000, description="return only the best N")
    return_documents: bool = False
    rank_fields: list[str] | None = Field(None, max_length=20, description="object fields joined as its text (v1)")
    max_chunks_per_doc: int | None = Field(None, ge=1, description="accepted (v1); documents are not chunked")
    max_tokens_per_doc: int | None = Field(None, ge=1, description="accepted (v2); the encoder truncates by itself")
    priority: int | None = Field(None, description="accepted (v2); not used")
    user: str | None = Field(None, min_length=1, max_length=128,
                             description="extension: rank for this user (their live history); absent: anonymous")
    history: list[str] | None = Field(None, max_length=200,
                                      description="extension: the user's purchased product ids, most recent first")

    _query_not_blank = field_validator("query")(not_blank)
    _history_ids = field_validator("history")(history_ids)

    @field_validator("documents")
    @classmethod
    def _documents(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for i, d in enumerate(v):
            if isinstance(d, str) and not d.strip():
                raise ValueError(f"documents[{i}] is blank")
            if isinstance(d, str) and len(d) > 20_000:
                raise ValueError(f"documents[{i}] is over 20,000 characters")
        return v


class CompatResult(BaseModel):
    index: int = Field(description="the document's position in the request")
    relevance_score: float = Field(description="P(yes) of the student, in [0, 1]; 0 for a document it could not score")
    document: dict[str, Any] | None = Field(None, description="with return_documents: the document as sent")


class CompatRerankResponse(BaseModel):
    id: str = Field(description="the request id (the served log's, and X-Request-ID's)")
    results: list[CompatResult]
    meta: dict[str, Any] = Field(description="api_version and billed_units as Cohere's; hmpps: arm, model_version, "
                                             "fallback (null when the student ranked)")
