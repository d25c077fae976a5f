"""Scoring one request's fetched features: decode, select history (Eq. 6), signals, one ONNX call.

No HTTP and no Redis here: ``service.api.handler`` fetches, calls a ``RequestScorer``
and builds the response; offline parity checks call ``score_sync`` directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.codec import decode_rows, encode_vector
from contract.signals import Listing, column_names
from contract.spec import SIGNALS, build_inputs, select_for, yes_probability
from service.core.bundle import LoadedBundle
from service.infra.store import Fetched


@dataclass
class Scored:
    scores: list[float | None]  # None: missing features
    stages: dict[str, float] = field(default_factory=dict)
    encoded_query: bytes | None = None
    history_used: int = 0
    # with explain: the history the model saw (most recent first) and, per candidate, what selection picked
    history_ids: list[str] | None = None
    selected: list[list[str]] | None = None
    signals: list[dict[str, float]] | None = None  # per candidate, by column name


@dataclass(frozen=True)
class Listed:
    """The caller's candidate list: ids in its order, and its first-stage scores (None where not sent)."""

    ids: list[str]
    scores: list[float | None]


@dataclass
class Prepared:
    """A request up to the ONNX call: its inputs, and what turning logits into ``Scored`` needs."""

    scored: Scored  # scores all None until ``finish``
    known: list[int]  # candidates with features, in the inputs' row order
    inputs: dict[str, np.ndarray] | None  # None: nothing to score
    hist_ids: list[str] = field(default_factory=list)
    selected: np.ndarray | None = None


def prepare(bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed, explain: bool = False) -> Prepared:
    """Decode features, encode a tail query, select history (Eq. 6), signals: the student's inputs."""
    spec = bundle.spec
    stages: dict[str, float] = {}
    t = time.perf_counter()
    encoded = None
    qrows, _ = decode_rows([fetched.query], spec.query_dim, spec.storage)
    if len(qrows):
        q = qrows[0]
    else:  # a tail query: encode it with the bundle's query encoder
        q = np.asarray(bundle.query_encoder.encode(query), dtype=np.float32)
        encoded = encode_vector(q, spec.storage)
        q = decode_rows([encoded], spec.query_dim, spec.storage)[0][0]  # what later requests will read
        stages["query_encode"] = time.perf_counter() - t
        t = time.perf_counter()
    cand_mat, known = decode_rows(fetched.candidates, spec.product_dim, spec.storage)
    scored = Scored([None] * len(fetched.candidates), stages, encoded)
    if not known:
        stages["selection"] = time.perf_counter() - t
        return Prepared(scored, known, None)
    # history arrives most recent first; selection wants oldest first
    hist_mat, kept = decode_rows(fetched.history[::-1], spec.product_dim, spec.storage)
    n_hist = len(fetched.history)
    hist_ids = [fetched.history_ids[n_hist - 1 - j] for j in kept]
    selected = select_for(spec, q, cand_mat, hist_mat) if explain else None
    listing = None
    if spec.signals:  # positions count every listed candidate, known or not
        listing = Listing(np.asarray(known), len(fetched.candidates),
                          np.array([np.nan if listed.scores[i] is None else listed.scores[i] for i in known], float),
                          [listed.ids[i] for i in known], hist_ids)
    inputs = build_inputs(spec, q, cand_mat, hist_mat, selected, listing)
    stages["selection"] = time.perf_counter() - t
    scored.history_used = len(hist_ids)
    return Prepared(scored, known, inputs, hist_ids, selected)


def finish(bundle: LoadedBundle, p: Prepared, logits: np.ndarray, inference_s: float) -> Scored:
    """The yes/no softmax of the student's logits into the request's scores (and, with explain, why)."""
    out = p.scored
    out.stages["inference"] = inference_s
    for i, prob in zip(p.known, yes_probability(logits).tolist(), strict=True):
        out.scores[i] = prob
    if p.selected is not None and p.inputs is not None:
        spec = bundle.spec
        out.history_ids = p.hist_ids[::-1]
        picks: list[list[str]] = [[] for _ in out.scores]
        for row, i in zip(p.selected, p.known, strict=True):
            picks[i] = [p.hist_ids[j] for j in sorted(row.tolist(), reverse=True)]  # most recent first
        out.selected = picks
        if spec.signals:
            names = column_names(spec.signals)
            out.signals = [{} for _ in out.scores]
            for row, i in zip(p.inputs[SIGNALS], p.known, strict=True):
                out.signals[i] = {n: round(float(v), 4) for n, v in zip(names, row, strict=True)}
    return out


def score_sync(bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed, explain: bool = False) -> Scored:
    """Decode features, select history (Eq. 6), signals, one batched ONNX call, yes/no softmax."""
    p = prepare(bundle, query, fetched, listed, explain)
    if p.inputs is None:
        return p.scored
    t = time.perf_counter()
    logits = bundle.scorer.logits(p.inputs)
    return finish(bundle, p, logits, time.perf_counter() - t)


class RequestScorer(Protocol):
    """Turns one request's fetched features into scores (run in a worker thread).

    The service scores with the student (``StudentScorer``); ``make bench`` swaps in
    its peers through ``create_app(settings, scorer=...)`` so that they pay for the
    same HTTP, validation, Redis and fail-open path.
    """

    name: str
    needs_summaries: bool  # fetch candidate summaries from Redis on every request
    # a fraction of a millisecond per request: run it on the event loop, since a worker-thread hand-off
    # costs about as much as the call (a tail query's encoding or an explain still go to a thread)
    inline: bool

    def __call__(self, bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed,
                 explain: bool = False) -> Scored: ...


class StudentScorer:
    name = "student"
    needs_summaries = False
    inline = True

    def __call__(self, bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed,
                 explain: bool = False) -> Scored:
        return score_sync(bundle, query, fetched, listed, explain)


STUDENT = StudentScorer()


def order(scores: list[float | None]) -> list[int]:
    """Known candidates sorted by score (ties keep the caller's order) fill the slots that
    known candidates held; unknown ones stay exactly where the caller put them."""
    known = [i for i, s in enumerate(scores) if s is not None]
    ranked = sorted(known, key=lambda i: (-scores[i], i))  # type: ignore[operator]
    out, it = [], iter(ranked)
    for i, s in enumerate(scores):
        out.append(next(it) if s is not None else i)
    return out
