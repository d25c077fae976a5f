"""Student bundles: the directory distillation writes and the service loads.

    manifest.json             version, dataset fingerprint, spec, metrics, sha256 of every file
    student.onnx              fusion network, dynamic batch (fp32)
    student.int8.onnx         the same, dynamic int8 quantization
    query_encoder.onnx        MiniLM-L6 + projection for tail queries
    tokenizer/tokenizer.json  the query encoder's tokenizer
    features/                 what ``hmpps publish`` writes to Redis

Only numpy, onnxruntime and tokenizers are needed here: the service image has no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.errors import BundleError
from service.spec import INPUT_NAMES, OUTPUT_NAME, FeatureSpec

FORMAT = "hmpps-bundle/1"
MANIFEST = "manifest.json"
QUERY_MAX_TOKENS = 32


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    for key in ("version", "dataset_fingerprint", "spec", "files", "models"):
        if key not in manifest:
            raise BundleError(f"{path} lacks the field {key!r}")
    return manifest


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Check every file's sha256 against the manifest; raise naming the first broken file."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    for rel, digest in sorted(manifest["files"].items()):
        path = bundle / rel
        if not path.is_file():
            raise BundleError(f"bundle {bundle}: {rel} is missing")
        if sha256_file(path) != digest:
            raise BundleError(f"bundle {bundle}: {rel} fails its sha256 check (tampered or truncated)")
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file() and str(p.relative_to(bundle)) not in listed)
    if extra:
        raise BundleError(f"bundle {bundle}: {extra[0]} is not listed in the manifest")
    try:
        FeatureSpec.from_dict(manifest["spec"])
    except (KeyError, ValueError) as e:
        raise BundleError(f"bundle {bundle}: bad spec in manifest: {e}") from None
    return manifest


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
    manifest: dict[str, Any]
    spec: FeatureSpec
    scorer: Scorer
    query_encoder: QueryEncoder
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def history_cap(self) -> int:
        return int(self.manifest.get("features", {}).get("history_cap", 50))


def load_bundle(path: Path, threads: int = 1, providers: list[str] | None = None, int8: bool = False) -> LoadedBundle:
    """Verify checksums, then open the ONNX sessions. Fails with BundleError naming the problem."""
    path = Path(path)
    manifest = verify_bundle(path)
    models = manifest["models"]
    student = models["student_int8"] if int8 and "student_int8" in models else models["student"]
    scorer = OnnxScorer(path / student, threads, providers)
    encoder = OnnxQueryEncoder(path / models["query_encoder"], path / models["tokenizer"], threads, providers)
    return LoadedBundle(path, manifest, FeatureSpec.from_dict(manifest["spec"]), scorer, encoder,
                        {"student_file": student})
