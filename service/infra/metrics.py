"""Prometheus metrics. With PROMETHEUS_MULTIPROC_DIR set (several workers), the
exposition aggregates every worker's files; labels never carry a user id."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# 1 ms to 1 s, fine at the low end where the SLO lives
BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Counter("hmpps_rerank_requests_total", "Rerank requests by arm and outcome", ["arm", "status"])
LATENCY = Histogram("hmpps_rerank_request_seconds", "End-to-end /rerank latency", ["arm"], buckets=BUCKETS)
STAGE = Histogram("hmpps_rerank_stage_seconds", "Per-stage latency", ["stage"], buckets=BUCKETS)
CANDIDATES = Histogram("hmpps_rerank_candidates", "Candidates per request",
                       buckets=(1, 5, 10, 20, 50, 100, 200))
FALLBACKS = Counter("hmpps_rerank_fallbacks_total", "Requests answered in the caller's order", ["reason"])
FEATURE_MISSES = Counter("hmpps_rerank_feature_misses_total", "Lookups that found no features", ["kind"])
REJECTED = Counter("hmpps_rerank_rejected_total", "Requests refused before work", ["reason"])
TEXT_ENCODED = Counter("hmpps_text_encoded_total",
                       "Free-text documents of /v1/rerank encoded by the product encoder (cache misses)")
TEXT_ENCODE_TIMEOUTS = Counter("hmpps_text_encode_timeouts_total",
                               "/v1/rerank requests whose free text was not encoded within HMPPS_TEXT_BUDGET_MS")
BATCH_REQUESTS = Histogram("hmpps_batch_requests", "Requests scored together in one ONNX call (HMPPS_BATCH_DELAY_MS)",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
INLINE_CLOSED = Counter("hmpps_inline_scoring_closed_total",
                        "Times an inline scoring call ran over HMPPS_INLINE_MAX_MS and scoring moved to worker threads")
IN_FLIGHT = Gauge("hmpps_rerank_in_flight", "Requests being served", multiprocess_mode="livesum")
BUNDLE_INFO = Gauge("hmpps_bundle_info", "Loaded bundles (value 1)", ["arm", "version"], multiprocess_mode="liveall")
FEEDBACK = Counter("hmpps_feedback_events_total", "Feedback events accepted", ["arm", "type"])
EFFICIENT_CLICKS = Counter("hmpps_feedback_efficient_clicks_total", "Dwell events over 5 s", ["arm"])
EVENTS = Counter("hmpps_events_total", "Events accepted by POST /events, by type (names outside the known ones: other)",
                 ["type"])
EVENT_DUPLICATES = Counter("hmpps_events_duplicates_total", "Events already recorded (same event_id), ignored")
HISTORY_APPENDS = Counter("hmpps_history_appends_total", "Events appended to a user's live history")
EVENT_UNKNOWN_PRODUCTS = Counter("hmpps_events_unknown_products_total",
                                 "Accepted events for products the live bundle has no features for")
BUNDLE_AGE = Gauge("hmpps_bundle_age_seconds", "Seconds since each loaded bundle's version was published to Redis",
                   ["version"], multiprocess_mode="max")
UPSERT_AGE = Gauge("hmpps_product_upsert_age_seconds",
                   "Seconds since the newest product write into each loaded version (its publish, or a later upsert)",
                   ["version"], multiprocess_mode="min")
PRODUCT_UPSERTS = Counter("hmpps_product_upserts_total", "Products written by POST /admin/products")
SERVED_LOGGED = Counter("hmpps_served_rankings_logged_total", "Served rankings written to the served stream")
SERVED_LOG_FAILURES = Counter("hmpps_served_log_failures_total",
                              "Served rankings that could not be logged (best effort, never the caller's error)")
TAIL_CACHE_FAILURES = Counter("hmpps_tail_query_cache_failures_total", "Tail-query cache writes that failed (best effort)")
READY = Gauge("hmpps_ready", "1 when this worker is ready", multiprocess_mode="liveall")
ARM_WEIGHT = Gauge("hmpps_arm_weight", "Configured traffic weight per arm (0: removed)", ["arm"], multiprocess_mode="max")

# label values known up front: their series exist at 0 from the first scrape, so
# dashboards and alert ratios show 0 rather than "no data" before the first event
REQUEST_STATUSES = ("ok", "fallback", "error")
FALLBACK_REASONS = ("timeout", "redis_unavailable", "model_error", "no_features")
STAGES = ("redis", "selection", "inference", "query_encode")
FEEDBACK_TYPES = ("impression", "click", "dwell")
EVENT_TYPES = ("purchase", "add_to_cart", "click", "other")  # label values: a type name is free text


def event_type_label(kind: str) -> str:
    return kind if kind in EVENT_TYPES else "other"


def init_labels(arms: list[str]) -> None:
    for reason in FALLBACK_REASONS:
        FALLBACKS.labels(reason)
    for stage in STAGES:
        STAGE.labels(stage)
    for kind in ("product", "query"):
        FEATURE_MISSES.labels(kind)
    for reason in ("overloaded", "body_too_large"):
        REJECTED.labels(reason)
    for kind in EVENT_TYPES:
        EVENTS.labels(kind)
    for arm in arms:
        LATENCY.labels(arm)
        EFFICIENT_CLICKS.labels(arm)
        for status in REQUEST_STATUSES:
            REQUESTS.labels(arm, status)
        for kind in FEEDBACK_TYPES:
            FEEDBACK.labels(arm, kind)


class RuntimeGauges:
    """Bundle versions and arm weights as gauges, with zero-valued series for every label seen.

    Multiprocess mode cannot remove label sets: stale versions and arms drop to 0 instead.
    """

    def __init__(self) -> None:
        self.bundle_labels: set[tuple[str, str]] = set()
        self.arm_names: set[str] = set()

    def set(self, versions: dict[str, str], weights: dict[str, float]) -> None:
        current = set(versions.items())
        for labels in self.bundle_labels - current:
            BUNDLE_INFO.labels(*labels).set(0)
        for labels in current:
            BUNDLE_INFO.labels(*labels).set(1)
        self.bundle_labels.update(current)
        for gone in self.arm_names - set(weights):
            ARM_WEIGHT.labels(gone).set(0)
        for name, weight in weights.items():
            ARM_WEIGHT.labels(name).set(weight)
        self.arm_names.update(weights)
        init_labels(list(weights))


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
