"""How a product becomes the text its features are computed from: one rule, offline and online.

Distillation encodes every catalogue product with it; the service's product
encoder encodes new products with it, so a product encoded online lands where
the offline run would have put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEXT_MAX_TOKENS = 128  # MiniLM tokens of a product's text
DESCRIPTION_WORDS = 60


def product_text(title: str, brand: str = "", category: Sequence[str] = (), description: str = "",
                 summary: str | None = None) -> str:
    """Title, brand, category path and the summary (or else the description), trimmed."""
    desc = summary_text(description, summary)
    path = " > ".join(category or [])
    return ". ".join(s for s in (title, brand, path, desc) if s)


def summary_text(description: str, summary: str | None = None) -> str:
    """What Redis keeps as a product's summary: the summary, or else the description, trimmed."""
    return " ".join((summary or description or "").split()[:DESCRIPTION_WORDS])


def record_text(p: dict[str, Any]) -> str:
    """``product_text`` of a normalized dataset product (``products.jsonl``)."""
    return product_text(p.get("title") or "", p.get("brand") or "", p.get("category") or [],
                        p.get("description") or "", p.get("summary"))
