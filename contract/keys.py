"""The Redis key schema: the one place that names keys.

Everything a bundle needs online lives under its version namespace, so a new
version is written beside the live one and the alias flip that activates it
is a single SET. Readers of a version check its ``complete`` marker, written
last, so they never trust half a catalog.

    hmpps:live                    -> version string of the active bundle (alias)
    hmpps:v:{ver}:manifest        -> the bundle's manifest.json
    hmpps:v:{ver}:complete        -> JSON {counts, published_at}; written last
    hmpps:v:{ver}:p:{{product_id}}  -> float32 bytes, the student's product features
    hmpps:v:{ver}:s:{{product_id}}  -> the product's summary text
    hmpps:v:{ver}:q:{query_key}   -> float32 bytes, a known query's features
    hmpps:v:{ver}:qc:{query_key}  -> the same for tail queries encoded online (TTL)
    hmpps:v:{ver}:ph:{{product_id}} -> hash {hash, ts, source}: a product upserted after the bundle was built
    hmpps:v:{ver}:upserted_at     -> unix time of the newest product upsert into this version

The product id in braces is a Redis Cluster hash tag: a product's features,
summary and upsert record share one slot, so an upsert writes them in one
atomic script, while a catalogue spreads over every shard (layout 2; layout 1
had no braces: republish bundles after upgrading). A request's other keys are
read per slot, see ``service/infra/store.py``.

User data is not model data: it outlives bundle versions and takes new actions.

    hmpps:h:{user_id}             -> the user's history: a sorted set of "event_id\x1fproduct_id"
                                     scored by the event's unix time, capped to the newest HISTORY_CAP
    hmpps:ev:{event_id}           -> seen marker of an accepted event (TTL): a retried event changes nothing
    hmpps:events                  -> stream of accepted events (POST /events), for training
    hmpps:feedback                -> stream of feedback events (impressions, clicks, dwell)
"""

from __future__ import annotations

import hashlib
import re
from typing import overload

PREFIX = "hmpps"
ALIAS = f"{PREFIX}:live"
FEEDBACK_STREAM = f"{PREFIX}:feedback"
EVENTS_STREAM = f"{PREFIX}:events"
SERVED_STREAM = f"{PREFIX}:served"  # one record per served ranking (contract/served.py)
HISTORY_SEP = "\x1f"  # between event id and product id in a history member

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


LAYOUT = 2  # the key layout's version; the manifest of a published version records it


def product(version: str, product_id: str) -> str:
    return f"{ns(version)}:p:{{{product_id}}}"


def summary(version: str, product_id: str) -> str:
    return f"{ns(version)}:s:{{{product_id}}}"


def product_meta(version: str, product_id: str) -> str:
    return f"{ns(version)}:ph:{{{product_id}}}"


def split_key(key_of_empty_id: str) -> tuple[str, str]:
    """(prefix, suffix) around the id in a per-product key, for code that builds keys from ids
    (the fetch script) or reads ids back from keys (prune)."""
    prefix, _, suffix = key_of_empty_id.rpartition("{}")
    return prefix + "{", "}" + suffix


def upserted_at(version: str) -> str:
    return f"{ns(version)}:upserted_at"


def query(version: str, text: str) -> str:
    return f"{ns(version)}:q:{query_key(text)}"


def tail_query(version: str, text: str) -> str:
    return f"{ns(version)}:qc:{query_key(text)}"


def user_history(user_id: str) -> str:
    return f"{PREFIX}:h:{user_id}"


def event_seen(event_id: str) -> str:
    return f"{PREFIX}:ev:{event_id}"


def history_member(event_id: str, product_id: str) -> str:
    return f"{event_id}{HISTORY_SEP}{product_id}"


def history_product(member: str | bytes) -> str:
    """The product id of a history member (everything after the first separator)."""
    return str(as_text(member)).split(HISTORY_SEP, 1)[-1]


@overload
def as_text(value: str | bytes) -> str: ...
@overload
def as_text(value: None) -> None: ...
@overload
def as_text(value: str | bytes | None) -> str | None: ...
def as_text(value: str | bytes | None) -> str | None:
    """A Redis reply as text: clients return bytes unless decode_responses is on (None stays None)."""
    return value.decode() if isinstance(value, bytes) else value
