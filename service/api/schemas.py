"""Request and response models of the HTTP API (they generate the OpenAPI spec)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from contract.events import MAX_ID, MAX_TEXT, TYPE_PATTERN, Event, Product, parse_product, parse_timestamp

ID = Field(min_length=1, max_length=128)
QUERY = Field(min_length=1, max_length=512)


def not_blank(cls: type, v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v


def lone_surrogate_at(value: Any, path: str = "body") -> str | None:
    """Where ``value`` holds a lone surrogate, or None. JSON may escape one (``"\\ud800"``) and pydantic lets
    it through inside lists and free-form objects, but it is not Unicode: no encoder, Redis or log can write it."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for k, v in value.items():
            where = lone_surrogate_at(k, f"{path} (a key)") or lone_surrogate_at(v, f"{path}.{k}")
            if where:
                return where
    elif isinstance(value, list):
        for i, v in enumerate(value):
            where = lone_surrogate_at(v, f"{path}[{i}]")
            if where:
                return where
    return None


class RequestBody(BaseModel):
    """A request body: its text is valid Unicode everywhere, keys and nested values included."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        where = lone_surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where} is not valid Unicode: it holds a lone surrogate (U+D800 to U+DFFF)")
        return data


def history_ids(cls: type, v: list[str] | None) -> list[str] | None:
    if v is not None and any(not (0 < len(p) <= MAX_ID) for p in v):
        raise ValueError(f"history ids must be 1 to {MAX_ID} characters")
    return v


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str = ID
    score: float | None = Field(None, description="the first stage's score, echoed for passthrough")


class RerankRequest(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "request_id": "req-123", "user_id": "u42", "query": "kitchen coffee makers",
        "candidates": [{"product_id": "p1", "score": 3.2}, {"product_id": "p2", "score": 2.9},
                       {"product_id": "p3"}],
        "top_n": 10, "return_summaries": False,
    }]})

    request_id: str | None = Field(None, max_length=128, description="echoed back; generated when absent")
    user_id: str = ID
    query: str = QUERY
    candidates: list[Candidate] = Field(min_length=1, max_length=1000,
                                        description="the first stage's ranking, best first; at most "
                                                    "HMPPS_MAX_CANDIDATES (default 200)")
    history: list[str] | None = Field(None, max_length=200,
                                      description="the user's purchased product ids, most recent first; "
                                                  "read from Redis when absent")
    top_n: int | None = Field(None, ge=1, le=200, description="return only the best N")
    return_summaries: bool = False
    explain: bool = Field(False, description="add the history used and, per result, the history selected for it")

    _query_not_blank = field_validator("query")(not_blank)

    @field_validator("candidates")
    @classmethod
    def _unique(cls, v: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for c in v:
            if c.product_id in seen:
                raise ValueError(f"duplicate product_id {c.product_id!r}")
            seen.add(c.product_id)
        return v

    _history_ids = field_validator("history")(history_ids)


class ResultExplain(BaseModel):
    selected_history: list[str] = Field(description="the history items selection picked for this candidate, "
                                                    "most recent first")
    features: Literal["offline", "encoded", "missing"] = Field(
        description="offline: computed with the bundle; encoded: by the product encoder online; missing: none")
    signals: dict[str, float] = Field(default_factory=dict,
                                      description="the ranking signals the student read for this candidate "
                                                  "(contract/signals.py), by column name")


class RequestExplain(BaseModel):
    history: list[str] = Field(description="the user's history as the model saw it, most recent first")


class Result(BaseModel):
    product_id: str
    score: float | None = Field(description="P(yes) from the student; the caller's score under fallback")
    rank: int = Field(description="1-based position in this response")
    original_rank: int = Field(description="1-based position in the request")
    missing_features: bool = Field(description="no features in Redis: kept at its original position")
    summary: str | None = None
    explain: ResultExplain | None = None


class RerankResponse(BaseModel):
    request_id: str
    arm: str
    model_version: str
    fallback: str | None = Field(description="null, or why the caller's order was returned")
    results: list[Result]
    timings_ms: dict[str, float]
    explain: RequestExplain | None = None


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["impression", "click", "dwell"]
    request_id: str = Field(min_length=1, max_length=128)
    user_id: str = ID
    arm: str = Field(min_length=1, max_length=64)
    product_id: str | None = Field(None, min_length=1, max_length=128)
    dwell_s: float | None = Field(None, ge=0, le=86400)
    ts: float | None = Field(None, ge=0, description="unix seconds; server time when absent")


class FeedbackBatch(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"events": [
        {"type": "impression", "request_id": "req-123", "user_id": "u42", "arm": "student"},
        {"type": "click", "request_id": "req-123", "user_id": "u42", "arm": "student", "product_id": "p2"},
        {"type": "dwell", "request_id": "req-123", "user_id": "u42", "arm": "student", "product_id": "p2",
         "dwell_s": 12.5},
    ]}]})
    events: list[FeedbackEvent] = Field(min_length=1, max_length=500)


class FeedbackAccepted(BaseModel):
    accepted: int


class EventIn(BaseModel):
    """One event of the own-data schema (contract/events.py), as it arrives over HTTP."""

    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(min_length=1, max_length=MAX_ID, description="unique per event: a retry changes nothing")
    user_id: str = ID
    product_id: str = ID
    type: str = Field(pattern=TYPE_PATTERN, description="purchase, add_to_cart, click, or another lower-case name")
    timestamp: float | str = Field(description="ISO 8601 or unix seconds; not in the future")
    query: str | None = Field(None, max_length=MAX_TEXT, description="the search text that led to it")
    session_id: str | None = Field(None, min_length=1, max_length=MAX_ID)
    request_id: str | None = Field(None, min_length=1, max_length=MAX_ID, description="the /rerank it follows")

    @field_validator("timestamp")
    @classmethod
    def _time(cls, v: float | str) -> float:
        return parse_timestamp(v)

    def to_event(self) -> Event:
        return Event(self.event_id, self.user_id, self.product_id, self.type, float(self.timestamp),
                     (self.query or "").strip() or None, self.session_id, self.request_id)


class EventsBatch(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"events": [
        {"event_id": "evt-991", "user_id": "u42", "product_id": "p2", "type": "purchase",
         "timestamp": "2026-12-02T10:15:00Z", "query": "kitchen coffee makers", "request_id": "req-123"},
    ]}]})
    events: list[EventIn] = Field(min_length=1, max_length=500)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="new events recorded")
    duplicates: int = Field(description="events already recorded (same event_id): nothing changed")
    history_appends: int = Field(description="events that joined a user's history")
    unknown_products: int = Field(description="new events for products the live bundle has no features for")


class ProductIn(BaseModel):
    """One product of the own-data schema (contract/events.py); ``image`` is a path relative to the service's
    ``HMPPS_IMAGE_DIR`` (images are refused when it is unset)."""

    model_config = ConfigDict(extra="forbid")
    product_id: str = ID
    title: str = Field(min_length=1, max_length=1000)
    brand: str | None = Field(None, max_length=200)
    category: list[str] | str | None = None
    description: str | None = Field(None, max_length=20_000)
    image: str | None = Field(None, max_length=1000)
    attributes: dict[str, Any] | None = None
    updated_at: float | str | None = Field(None, description="ISO 8601 or unix seconds; an older record is skipped")

    _product: Product = PrivateAttr()

    @model_validator(mode="after")
    def _contract(self) -> ProductIn:
        self._product = parse_product(self.model_dump(exclude_none=True))  # the one set of rules; names the field
        return self

    def to_product(self) -> Product:
        return self._product


class ProductsBatch(RequestBody):
    model_config = ConfigDict(extra="forbid")
    products: list[ProductIn] = Field(min_length=1, max_length=100)


class ProductsUpserted(BaseModel):
    versions: dict[str, dict[str, float]] = Field(description="per bundle version: written, unchanged, stale, seconds")


class ErrorBody(BaseModel):
    """Every error the service answers has this shape (validation errors add ``errors``)."""

    error: str = Field(description="the error's kind: ValidationError, InputError, Unauthorized, PayloadTooLarge, ...")
    detail: str = Field(description="what is wrong, naming the field or the limit")
    errors: list[dict[str, Any]] | None = Field(None, description="validation errors: one per field, with its location")
