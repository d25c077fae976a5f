"""The bundle runtime: ONNX sessions over a verified bundle (the format is ``contract.bundle``).

Only numpy, onnxruntime and tokenizers are needed here: the service image has no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.bundle import QUERY_ENCODER, TOKENIZER, Manifest, verify_bundle
from contract.constants import QUERY_MAX_TOKENS
from contract.errors import BundleError
from contract.spec import INPUT_NAMES, OUTPUT_NAME, FeatureSpec


class Scorer(Protocol):
    """Scores N (query, candidate, history) rows; returns (N, 2) yes/no logits."""

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class QueryEncoder(Protocol):
    """Encodes a tail query to the bundle's query features (Dq,)."""

    def encode(self, query: str) -> np.ndarray: ...


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # one session per process, thread count explicit (DESIGN.md section 5)
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def make_session(path: Path, threads: int, providers: list[str]) -> Any:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise BundleError(f"execution provider(s) {missing} not available; this onnxruntime has {sorted(available)}")
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)


class OnnxScorer:
    def __init__(self, path: Path, threads: int = 1, providers: list[str] | None = None):
        self.session = make_session(path, threads, providers or ["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES):
            raise BundleError(f"{path} has inputs {names}, expected {list(INPUT_NAMES)}")

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], inputs)[0]


class OnnxQueryEncoder:
    """MiniLM-L6 + projection in ONNX; the output is already in the query-feature layout."""

    def __init__(self, model: Path, tokenizer: Path, threads: int = 1, providers: list[str] | None = None):
        from tokenizers import Tokenizer

        self.session = make_session(model, threads, providers or ["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(QUERY_MAX_TOKENS)
        self.tokenizer.no_padding()
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, query: str) -> np.ndarray:
        enc = self.tokenizer.encode(query)
        feeds = {
            "input_ids": np.asarray([enc.ids], dtype=np.int64),
            "attention_mask": np.asarray([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([enc.type_ids], dtype=np.int64),
        }
        return self.session.run(["features"], {k: v for k, v in feeds.items() if k in self.input_names})[0][0]


@dataclass
class LoadedBundle:
    path: Path
    manifest: Manifest
    scorer: Scorer
    query_encoder: QueryEncoder
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.spec

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def history_cap(self) -> int:
        return self.manifest.history_cap


def load_bundle(path: Path, threads: int = 1, providers: list[str] | None = None, int8: bool = False) -> LoadedBundle:
    """Verify checksums, then open the ONNX sessions. Fails with BundleError naming the problem."""
    path = Path(path)
    manifest = verify_bundle(path)
    student = manifest.student_file(int8)
    scorer = OnnxScorer(path / student, threads, providers)
    encoder = OnnxQueryEncoder(path / manifest.models[QUERY_ENCODER], path / manifest.models[TOKENIZER],
                               threads, providers)
    return LoadedBundle(path, manifest, scorer, encoder, {"student_file": student})
