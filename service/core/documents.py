"""Documents of the Cohere/Jina rerank shape, as candidates the student can score.

A document is a product id or free text. Free text has no features in Redis: the bundle's
product encoder computes them online (the same recipe as a product upsert, with no image),
and a bounded in-process cache keeps them per bundle version, so a repeated document costs
a dictionary lookup. ``DocumentStore`` hands them to the request path in place of the
store's (absent) product features, so scoring, fail-open, metrics and the served log stay
exactly those of ``/rerank``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from contract.codec import encode_vector
from contract.errors import BundleError
from contract.events import MAX_ID
from service.core.bundle import LoadedBundle, no_product_encoder
from service.infra.store import FeatureStore, Fetched

TEXT_ID_PREFIX = "text:"


@dataclass(frozen=True)
class Document:
    """One document: the candidate id it is scored under, and its text when it is free text."""

    candidate_id: str
    text: str | None  # None: a product id, read from the store like /rerank's candidates


def as_documents(raw: list[str | dict[str, Any]], rank_fields: list[str] | None = None) -> list[Document]:
    """A string without whitespace is a product id; any other string is free text. An object names a
    product by ``id``, or brings text (``text``, or the ``rank_fields`` it lists, joined).
    Free text is scored under ``text:<hash>:<position>``, so equal texts stay distinct candidates."""
    out = []
    for i, d in enumerate(raw):
        if isinstance(d, str):
            text = None if d and not any(ch.isspace() for ch in d) else d
            pid: object = d if text is None else None
        else:
            pid = d.get("id")
            fields = rank_fields or ["text"]
            parts = [str(d[f]) for f in fields if d.get(f) not in (None, "")]
            text = " ".join(parts) if parts and pid is None else None
            if pid is None and text is None:
                raise ValueError(f"documents[{i}]: an object needs an 'id' (a product) or text "
                                 f"({', '.join(repr(f) for f in fields)})")
        if text is not None:
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            out.append(Document(f"{TEXT_ID_PREFIX}{digest}:{i}", text))
        else:
            out.append(Document(_product_id(i, pid, isinstance(d, str)), None))
    return out


def _product_id(i: int, pid: object, bare: bool) -> str:
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise ValueError(f"documents[{i}]: 'id' must be a string or an integer")
    s = str(pid)
    if not 0 < len(s) <= MAX_ID:
        hint = " (a string without whitespace is read as a product id; send {\"text\": ...} for free text)" if bare else ""
        raise ValueError(f"documents[{i}]: a product id must be 1 to {MAX_ID} characters{hint}")
    return s


class TextFeatures:
    """Free text -> stored product features (the bundle's storage), cached per (version, text), LRU-bounded."""

    def __init__(self, max_items: int = 50_000):
        self.max_items = max_items
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()  # encode runs in worker threads

    def cached(self, version: str, text: str) -> bytes | None:
        with self._lock:
            got = self._cache.get((version, text))
            if got is not None:
                self._cache.move_to_end((version, text))
            return got

    def missing(self, version: str, texts: list[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if self.cached(version, t) is None))

    def encode(self, bundle: LoadedBundle, texts: list[str]) -> None:
        """Encode ``texts`` with the bundle's product encoder into the cache (sync: a worker thread)."""
        if not texts:
            return
        if bundle.product_encoder is None:
            raise no_product_encoder(bundle.version)
        feats = bundle.product_encoder.encode([(t, None) for t in texts])
        if feats.shape != (len(texts), bundle.spec.product_dim):
            raise BundleError(f"the product encoder returned shape {feats.shape} for {len(texts)} texts")
        with self._lock:
            for text, vec in zip(texts, feats, strict=True):
                self._cache[(bundle.version, text)] = encode_vector(vec, bundle.spec.storage)
                self._cache.move_to_end((bundle.version, text))
            while len(self._cache) > self.max_items:
                self._cache.popitem(last=False)

    def vectors(self, version: str, docs: list[Document]) -> dict[str, bytes]:
        out = {}
        for d in docs:
            if d.text is not None and (v := self.cached(version, d.text)) is not None:
                out[d.candidate_id] = v
        return out


class DocumentStore:
    """The feature store, with the request's free-text documents' vectors where it has none."""

    def __init__(self, inner: FeatureStore, vectors: dict[str, dict[str, bytes]]):
        self.inner = inner
        self.vectors = vectors  # bundle version -> product id -> vector

    async def fetch(self, version: str, user_id: str, query: str, product_ids: list[str],
                    history_ids: list[str] | None, history_cap: int, want_summaries: bool,
                    want_sources: bool = False) -> Fetched:
        fetched = await self.inner.fetch(version, user_id, query, product_ids, history_ids, history_cap,
                                         want_summaries, want_sources)
        vectors = self.vectors.get(version)
        if not vectors:
            return fetched
        cands = [c if c is not None else vectors.get(pid) for pid, c in zip(product_ids, fetched.candidates,
                                                                             strict=True)]
        if not want_sources:
            return replace(fetched, candidates=cands)
        stored = fetched.sources or [None] * len(product_ids)
        sources = [("encoded" if pid in vectors else s) for pid, s in zip(product_ids, stored, strict=True)]
        return replace(fetched, candidates=cands, sources=sources)

    def __getattr__(self, name: str) -> Any:  # cache_query and the rest: the store's own
        return getattr(self.inner, name)
