"""The Redis key schema: the one place that names keys.

Everything a bundle needs online lives under its version namespace, so a new
version is written beside the live one and the alias flip that activates it
is a single SET. Readers of a version check its ``complete`` marker, written
last, so they never trust half a catalog.

    hmpps:live                    -> version string of the active bundle (alias)
    hmpps:v:{ver}:manifest        -> the bundle's manifest.json
    hmpps:v:{ver}:complete        -> JSON {counts, published_at}; written last
    hmpps:v:{ver}:p:{product_id}  -> float32 bytes, the student's product features
    hmpps:v:{ver}:s:{product_id}  -> the product's summary text
    hmpps:v:{ver}:q:{query_key}   -> float32 bytes, a known query's features
    hmpps:v:{ver}:qc:{query_key}  -> the same for tail queries encoded online (TTL)
    hmpps:v:{ver}:u:{user_id}     -> list of product ids, newest first, capped
    hmpps:feedback                -> stream of feedback events (not versioned)
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "hmpps"
ALIAS = f"{PREFIX}:live"
FEEDBACK_STREAM = f"{PREFIX}:feedback"

_WS = re.compile(r"\s+")


def normalize_query(query: str) -> str:
    """The query form that keys use: lower-cased, whitespace collapsed."""
    return _WS.sub(" ", query.strip().lower())


def query_key(query: str) -> str:
    # hashed: queries are free text of any length and alphabet
    return hashlib.sha1(normalize_query(query).encode("utf-8")).hexdigest()[:20]


def ns(version: str) -> str:
    return f"{PREFIX}:v:{version}"


def manifest(version: str) -> str:
    return f"{ns(version)}:manifest"


def complete(version: str) -> str:
    return f"{ns(version)}:complete"


def product(version: str, product_id: str) -> str:
    return f"{ns(version)}:p:{product_id}"


def summary(version: str, product_id: str) -> str:
    return f"{ns(version)}:s:{product_id}"


def query(version: str, text: str) -> str:
    return f"{ns(version)}:q:{query_key(text)}"


def tail_query(version: str, text: str) -> str:
    return f"{ns(version)}:qc:{query_key(text)}"


def user_history(version: str, user_id: str) -> str:
    return f"{ns(version)}:u:{user_id}"
