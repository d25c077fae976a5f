"""Constants that the offline stages and the service must agree on, defined once."""

from __future__ import annotations

# Newest purchases kept per user: what publish seeds, what /events keeps and what a request reads.
HISTORY_CAP = 50
# Histories expire this long after their last update (the service's default; 0: never).
HISTORY_TTL_S = 365 * 24 * 3600
# An accepted event id is remembered this long, so a retried batch changes nothing.
EVENT_DEDUPE_TTL_S = 7 * 24 * 3600
EVENTS_STREAM_MAXLEN = 5_000_000
# Tail queries encoded online are cached in Redis this long (the service's default).
TAIL_QUERY_TTL_S = 7 * 24 * 3600
# Tokens of a query fed to the bundle's query encoder, at export and at serving.
QUERY_MAX_TOKENS = 32
# The arm that returns the caller's order; also the model_version it reports.
PASSTHROUGH = "passthrough"
# The paper's online test (Sec. 5.6) counts a click as efficient when dwell exceeds 5 s.
EFFICIENT_DWELL_S = 5.0
# Approximate cap of the feedback stream (XADD MAXLEN ~).
FEEDBACK_STREAM_MAXLEN = 5_000_000
# Approximate cap of the served-rankings stream (XADD MAXLEN ~): about 5M rerank responses.
SERVED_STREAM_MAXLEN = 5_000_000
