"""The student's peers behind the same HTTP service path, for ``make bench``.

Each peer is a ``service.core.scoring.RequestScorer``: the app, validation, arm
assignment, the Redis round trip, the limiter and fail-open stay the
service's own; only the scoring call changes.

- ``eager``: the distilled student in PyTorch eager (``distill/student.pt``);
- ``cross-encoder``: MiniLM-L6 int8 ONNX over (query, summary) for the same
  candidates, with summaries fetched from Redis on every request. Its model
  comes from ``hmpps bench-model`` (``PIPELINE/bench/``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from service.core.bundle import LoadedBundle, make_session
from service.core.scoring import Listed, Scored, score_sync
from service.infra.store import Fetched

PEERS = ("student", "eager", "cross-encoder")


class TorchStudent:
    """``service.core.bundle.Scorer`` over the PyTorch checkpoint the ONNX student was exported from."""

    def __init__(self, checkpoint: Path, threads: int = 1):
        import torch

        from contract.spec import FeatureSpec
        from distill.student import Student, StudentConfig

        torch.set_num_threads(threads)
        ckpt = torch.load(checkpoint, weights_only=False)
        self.model = Student(FeatureSpec(**ckpt["spec"]), StudentConfig.from_checkpoint(ckpt["config"]))
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval()
        self._torch = torch

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self._torch.no_grad():
            return self.model(*(self._torch.from_numpy(inputs[n]) for n in self.model.spec.input_names)).numpy()


class EagerStudentScorer:
    name = "student PyTorch eager"
    needs_summaries = False
    inline = False  # torch eager: milliseconds, a worker thread

    def __init__(self, checkpoint: Path, threads: int = 1):
        self.model = TorchStudent(checkpoint, threads)
        self._bundles: dict[str, LoadedBundle] = {}

    def __call__(self, bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed,
                 explain: bool = False) -> Scored:
        swapped = self._bundles.get(bundle.version)
        if swapped is None:  # same decoding, selection and query encoder; the scoring call is torch
            swapped = self._bundles[bundle.version] = dataclasses.replace(bundle, scorer=self.model)
        return score_sync(swapped, query, fetched, listed)


class CrossEncoderScorer:
    """MiniLM-L6 int8 over (query, summary) pairs, padded to the length the model was benchmarked at."""

    name = "MiniLM-L6 int8 cross-encoder"
    needs_summaries = True
    inline = False

    def __init__(self, model: Path, tokenizer: Path, threads: int = 1, max_tokens: int = 64):
        from tokenizers import Tokenizer

        self.session = make_session(model, threads, ["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(max_tokens, strategy="longest_first")
        self.tokenizer.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")

    def __call__(self, bundle: LoadedBundle, query: str, fetched: Fetched, listed: Listed,
                 explain: bool = False) -> Scored:
        t = time.perf_counter()
        known = [i for i, s in enumerate(fetched.summaries) if s is not None]
        scores: list[float | None] = [None] * len(fetched.candidates)
        if not known:
            return Scored(scores, {"tokenize": time.perf_counter() - t})
        enc = self.tokenizer.encode_batch([(query, fetched.summaries[i]) for i in known])
        feeds = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
        }
        stages = {"tokenize": time.perf_counter() - t}
        t = time.perf_counter()
        logit = self.session.run(["score"], feeds)[0]
        stages["inference"] = time.perf_counter() - t
        for i, z in zip(known, logit, strict=True):
            scores[i] = float(1.0 / (1.0 + np.exp(-z)))
        return Scored(scores, stages)


def make_peer(peer: str, pipeline: Path, threads: int = 1) -> Any:
    """The RequestScorer for ``peer``; None for the student (the service's own scorer)."""
    pipeline = Path(pipeline)
    if peer == "student":
        return None
    if peer == "eager":
        ckpt = pipeline / "distill" / "student.pt"
        if not ckpt.is_file():
            raise InputError(f"{ckpt} is missing: run 'hmpps pipeline' (its distill stage writes it)")
        return EagerStudentScorer(ckpt, threads)
    if peer == "cross-encoder":
        model, tok = pipeline / "bench" / "cross_encoder.int8.onnx", pipeline / "bench" / "cross_encoder_tokenizer.json"
        missing = [str(p) for p in (model, tok) if not p.is_file()]
        if missing:
            raise InputError(f"cross-encoder files missing ({', '.join(missing)}): run 'hmpps bench-model --pipeline "
                             f"{pipeline} --data DATA' first, which fine-tunes and exports it")
        return CrossEncoderScorer(model, tok, threads)
    raise InputError(f"unknown peer {peer!r}: choose one of {', '.join(PEERS)}")


def serve_peer(peer: str, pipeline: Path, host: str = "127.0.0.1", port: int = 8000, threads: int = 1) -> None:
    """One uvicorn worker serving ``pipeline/bundle`` with ``peer`` as the scorer (embedded Redis by default)."""
    import os

    import uvicorn

    from service.api.app import create_app
    from service.infra.settings import Settings

    os.environ["HMPPS_BUNDLE"] = str(Path(pipeline) / "bundle")
    scorer = make_peer(peer, pipeline, threads)
    uvicorn.run(create_app(Settings(), scorer=scorer), host=host, port=port, log_level="warning", access_log=False)
