"""The own-data schema (``hmpps-owndata/1``): a shop's products and events, as files and over HTTP.

One set of rules for both sides: ``hmpps data events`` reads files with it, and
``POST /events`` / ``POST /admin/products`` validate request bodies with it.

Product (one JSON object, or one CSV row)::

    product_id   required, 1-128 characters
    title        required, unless brand, category or description can name the product (its title is then
                 the first words of the description, else the brand, else the category's last level)
    brand        optional
    category     optional: a path as a list, or one string with levels joined by ">"
    description  optional
    image        optional: a local file path (relative to the products file); a URL is kept as metadata
    attributes   optional: free-form object (in CSV, a JSON object in that column)
    updated_at   optional: when the record last changed (ISO 8601 or unix seconds); an upsert older
                 than the one already applied is skipped

Event::

    event_id     required, 1-128 characters: a retried event changes nothing
    user_id      required
    product_id   required
    type         required: a name (purchase, add_to_cart, click, or another lower-case name)
    timestamp    required: ISO 8601 (with a zone, or UTC) or unix seconds; not in the future
    query        optional: the search text that led to it
    session_id, request_id   optional

Every check raises ``ValueError`` naming the field, so a reader can count and
list bad lines and an endpoint can answer 422 with the reason.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

SCHEMA = "hmpps-owndata/1"
PRODUCT_FIELDS = ("product_id", "title", "brand", "category", "description", "image", "attributes", "updated_at")
REQUIRED_PRODUCT_FIELDS = ("product_id", "title")
EVENT_FIELDS = ("event_id", "user_id", "product_id", "type", "timestamp", "query", "session_id", "request_id")
REQUIRED_EVENT_FIELDS = ("event_id", "user_id", "product_id", "type", "timestamp")
# the event types that make up a user's history (offline: the purchases; online: the appended actions)
DEFAULT_POSITIVE_TYPES = ("purchase", "add_to_cart")
MAX_ID = 128
MAX_TEXT = 512
MAX_FUTURE_S = 300  # clocks disagree a little; an event further ahead than this is a bug upstream
CATEGORY_SEPARATOR = ">"
TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
_TYPE = re.compile(TYPE_PATTERN)


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    product_id: str
    type: str
    timestamp: float  # unix seconds
    query: str | None = None
    session_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    brand: str = ""
    category: tuple[str, ...] = ()
    description: str = ""
    image: str | None = None  # a local path as given (the reader resolves it)
    image_url: str | None = None  # a URL given as the image: metadata only
    attributes: dict[str, Any] = field(default_factory=dict)
    updated_at: float | None = None


def _unknown(d: dict[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(set(d) - set(known))
    if extra:
        raise ValueError(f"unknown field {extra[0]!r} (known: {', '.join(known)})")


def _id(d: dict[str, Any], name: str, required: bool = True) -> str | None:
    v = d.get(name)
    if v is None or v == "":
        if required:
            raise ValueError(f"missing {name}")
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"{name} must be a string, got {type(v).__name__}")
    s = str(v).strip()
    if not s or len(s) > MAX_ID:
        raise ValueError(f"{name} must be 1 to {MAX_ID} characters")
    return s


def _text(d: dict[str, Any], name: str, limit: int | None = None) -> str:
    v = d.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string, got {type(v).__name__}")
    if limit is not None and len(v) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return v


def parse_timestamp(value: Any, now: float | None = None) -> float:
    """ISO 8601 (a naive time is UTC) or unix seconds -> unix seconds; refuses the far future."""
    if isinstance(value, bool) or value is None or value == "":
        raise ValueError("timestamp must be ISO 8601 or unix seconds")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            ts = float(s)
        except ValueError:
            try:
                dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"timestamp {value!r} is neither ISO 8601 nor unix seconds") from None
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    else:
        raise ValueError(f"timestamp must be ISO 8601 or unix seconds, got {type(value).__name__}")
    if not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp {value!r} is not a time")
    if ts > (time.time() if now is None else now) + MAX_FUTURE_S:
        raise ValueError(f"timestamp {value!r} is in the future")
    return ts


def parse_event(d: Any, now: float | None = None) -> Event:
    if not isinstance(d, dict):
        raise ValueError("an event must be a JSON object")
    _unknown(d, EVENT_FIELDS)
    event_id, user_id, product_id = (_id(d, n) for n in ("event_id", "user_id", "product_id"))
    kind = d.get("type")
    if not isinstance(kind, str) or not _TYPE.match(kind):
        raise ValueError(f"type must be a lower-case name like 'purchase' or 'add_to_cart', got {kind!r}")
    query = _text(d, "query", MAX_TEXT).strip() or None
    return Event(event_id, user_id, product_id, kind, parse_timestamp(d.get("timestamp"), now),  # type: ignore[arg-type]
                 query, _id(d, "session_id", False), _id(d, "request_id", False))


def parse_category(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = value.split(CATEGORY_SEPARATOR)
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        parts = value
    else:
        raise ValueError("category must be a list of strings or one string with levels joined by '>'")
    return tuple(p.strip() for p in parts if p.strip())


def _fallback_title(d: dict[str, Any]) -> str:
    # real catalogues hold a few untitled products (3 in the paper's Office data); dropping them would
    # also drop their purchases and shrink the k-core
    words = _text(d, "description").split()
    if words:
        return " ".join(words[:12])
    if brand := _text(d, "brand").strip():
        return brand
    category = parse_category(d.get("category")) if d.get("category") not in (None, "") else ()
    return category[-1] if category else ""


def parse_product(d: Any) -> Product:
    if not isinstance(d, dict):
        raise ValueError("a product must be a JSON object")
    _unknown(d, PRODUCT_FIELDS)
    pid = _id(d, "product_id")
    title = _text(d, "title").strip() or _fallback_title(d)
    if not title:
        raise ValueError("missing title (and no description, brand or category to name the product by)")
    attributes = d.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("attributes must be an object")
    image = _text(d, "image").strip() or None
    url = None
    if image and re.match(r"^[a-z][a-z0-9+.-]*://", image, re.I):
        image, url = None, image
    updated = parse_timestamp(d["updated_at"]) if d.get("updated_at") not in (None, "") else None
    return Product(pid, title, _text(d, "brand").strip(), parse_category(d.get("category")),  # type: ignore[arg-type]
                   _text(d, "description"), image, url, attributes, updated)
