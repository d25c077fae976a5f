"""How a product becomes the text its features are computed from: one rule, offline and online.

Distillation encodes every catalogue product with it; the service's product
encoder encodes new products with it, so a product encoded online lands where
the offline run would have put it. ``product_row`` is what an upsert stores per
product (text, image file, content hash, time, summary), the same whether the
service encodes it (``POST /admin/products``) or ``hmpps encode`` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.events import Product

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


@dataclass(frozen=True)
class ProductRow:
    """One product as an upsert encodes and stores it."""

    product_id: str
    text: str  # what the product encoder reads (``product_text``)
    image: Path | None  # the image file as given, resolved against the products file; it may not exist
    hash: str  # ``content_hash``: an unchanged product is not written again
    updated_at: float  # the record's time, else the time of the upsert
    summary: str  # what Redis keeps as its summary


def image_file(p: Product, base: Path | None) -> Path | None:
    """The product's image path, relative paths resolved against ``base`` (the products file's folder)."""
    if not p.image:
        return None
    path = Path(p.image)
    return path if path.is_absolute() or base is None else base / path


def content_hash(p: Product, image: Path | None) -> str:
    """Changes when anything the features are computed from changes: the text fields and the image bytes."""
    h = hashlib.sha256(json.dumps([p.title, p.brand, list(p.category), p.description, p.attributes],
                                  sort_keys=True).encode())
    if image is not None and image.is_file():
        h.update(image.read_bytes())
    return h.hexdigest()[:32]


def product_row(p: Product, base: Path | None, now: float) -> ProductRow:
    image = image_file(p, base)
    return ProductRow(p.product_id, product_text(p.title, p.brand, p.category, p.description), image,
                      content_hash(p, image), float(p.updated_at if p.updated_at is not None else now),
                      summary_text(p.description) or p.title)
