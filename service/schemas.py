"""Request and response models of the HTTP API (they generate the OpenAPI spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID = Field(min_length=1, max_length=128)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str = ID
    score: float | None = Field(None, description="the first stage's score, echoed for passthrough")


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "request_id": "req-123", "user_id": "u42", "query": "kitchen coffee makers",
        "candidates": [{"product_id": "p1", "score": 3.2}, {"product_id": "p2", "score": 2.9},
                       {"product_id": "p3"}],
        "top_n": 10, "return_summaries": False,
    }]})

    request_id: str | None = Field(None, max_length=128, description="echoed back; generated when absent")
    user_id: str = ID
    query: str = Field(min_length=1, max_length=512)
    candidates: list[Candidate] = Field(min_length=1, max_length=200,
                                        description="the first stage's ranking, best first")
    history: list[str] | None = Field(None, max_length=200,
                                      description="the user's purchased product ids, most recent first; "
                                                  "read from Redis when absent")
    top_n: int | None = Field(None, ge=1, le=200, description="return only the best N")
    return_summaries: bool = False

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be blank")
        return v

    @field_validator("candidates")
    @classmethod
    def _unique(cls, v: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for c in v:
            if c.product_id in seen:
                raise ValueError(f"duplicate product_id {c.product_id!r}")
            seen.add(c.product_id)
        return v

    @field_validator("history")
    @classmethod
    def _history_ids(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not (0 < len(p) <= 128) for p in v):
            raise ValueError("history ids must be 1 to 128 characters")
        return v


class Result(BaseModel):
    product_id: str
    score: float | None = Field(description="P(yes) from the student; the caller's score under fallback")
    rank: int = Field(description="1-based position in this response")
    original_rank: int = Field(description="1-based position in the request")
    missing_features: bool = Field(description="no features in Redis: kept at its original position")
    summary: str | None = None


class RerankResponse(BaseModel):
    request_id: str
    arm: str
    model_version: str
    fallback: str | None = Field(description="null, or why the caller's order was returned")
    results: list[Result]
    timings_ms: dict[str, float]


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["impression", "click", "dwell"]
    request_id: str = Field(min_length=1, max_length=128)
    user_id: str = ID
    arm: str = Field(min_length=1, max_length=64)
    product_id: str | None = Field(None, min_length=1, max_length=128)
    dwell_s: float | None = Field(None, ge=0, le=86400)
    ts: float | None = Field(None, ge=0, description="unix seconds; server time when absent")


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"events": [
        {"type": "impression", "request_id": "req-123", "user_id": "u42", "arm": "student"},
        {"type": "click", "request_id": "req-123", "user_id": "u42", "arm": "student", "product_id": "p2"},
        {"type": "dwell", "request_id": "req-123", "user_id": "u42", "arm": "student", "product_id": "p2",
         "dwell_s": 12.5},
    ]}]})
    events: list[FeedbackEvent] = Field(min_length=1, max_length=500)


class FeedbackAccepted(BaseModel):
    accepted: int


class ErrorBody(BaseModel):
    error: str
    detail: str
