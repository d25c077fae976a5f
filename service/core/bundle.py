"""The bundle runtime: ONNX sessions over a verified bundle (the format is ``contract.bundle``).

Only numpy, onnxruntime and tokenizers are needed here: the service image has no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.bundle import PRODUCT_ENCODER, QUERY_ENCODER, TOKENIZER, Manifest, verify_bundle
from contract.constants import QUERY_MAX_TOKENS
from contract.errors import BundleError
from contract.images import pixels
from contract.products import TEXT_MAX_TOKENS
from contract.spec import ENCODER_OUTPUT, INPUT_NAMES, OUTPUT_NAME, SIGNALS, FeatureSpec


class Scorer(Protocol):
    """Scores N (query, candidate, history) rows; returns (N, 2) yes/no logits."""

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class QueryEncoder(Protocol):
    """Encodes a tail query to the bundle's query features (Dq,)."""

    def encode(self, query: str) -> np.ndarray: ...


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # one session per process with an explicit thread count (HMPPS_ORT_THREADS): workers x threads must
    # not exceed the cores, or sessions in different processes fight over them
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
    def __init__(self, path: Path, threads: int = 1, providers: list[str] | None = None,
                 spec: FeatureSpec | None = None):
        self.session = make_session(path, threads, providers or ["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        # without a spec (offline checks): the base inputs, with or without signals
        expected = list(spec.input_names) if spec is not None else \
            list(INPUT_NAMES) + ([SIGNALS] if SIGNALS in names else [])
        if sorted(names) != sorted(expected):
            raise BundleError(f"{path} has inputs {names}, expected {expected}")

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
        feeds = {  # contract.spec.QUERY_ENCODER_INPUTS
            "input_ids": np.asarray([enc.ids], dtype=np.int64),
            "attention_mask": np.asarray([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([enc.type_ids], dtype=np.int64),
        }
        return self.session.run([ENCODER_OUTPUT], {k: v for k, v in feeds.items() if k in self.input_names})[0][0]


class ProductEncoder(Protocol):
    """Encodes new products to the bundle's product features (n, Dp), without retraining."""

    def encode(self, products: list[tuple[str, Path | None]]) -> np.ndarray: ...


class OnnxProductEncoder:
    """MiniLM-L6 + the vision tower + projection in ONNX (``distill.export.ProductEncoderModule``).

    Input: a product's text (``contract.products.product_text``) and its image file, or None.
    """

    def __init__(self, model: Path, tokenizer: Path, image_size: int, threads: int = 1,
                 providers: list[str] | None = None, product_dim: int | None = None):
        from tokenizers import Tokenizer

        self.product_dim = product_dim
        self.session = make_session(model, threads, providers or ["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(TEXT_MAX_TOKENS)
        self.tokenizer.enable_padding()
        self.image_size = image_size
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, products: list[tuple[str, Path | None]], batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(products), batch):
            chunk = products[start:start + batch]
            encs = self.tokenizer.encode_batch([text for text, _ in chunk])
            pix = np.zeros((len(chunk), 3, self.image_size, self.image_size), np.float32)
            has = np.zeros((len(chunk), 1), np.float32)
            for i, (_, image) in enumerate(chunk):
                if image is not None and Path(image).is_file() and "pixels" in self.input_names:
                    pix[i], has[i] = pixels(image, self.image_size), 1.0
            feeds = {"input_ids": np.asarray([e.ids for e in encs], np.int64),  # PRODUCT_ENCODER_INPUTS
                     "attention_mask": np.asarray([e.attention_mask for e in encs], np.int64),
                     "token_type_ids": np.asarray([e.type_ids for e in encs], np.int64),
                     "pixels": pix, "has_image": has}
            out.append(self.session.run([ENCODER_OUTPUT], {k: v for k, v in feeds.items() if k in self.input_names})[0])
        feats = np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.product_dim or 0), np.float32)
        if self.product_dim is not None and feats.shape[1] < self.product_dim:
            # the popularity and co-purchase slices: nobody has bought a new product yet
            feats = np.pad(feats, ((0, 0), (0, self.product_dim - feats.shape[1])))
        return feats


@dataclass
class LoadedBundle:
    path: Path
    manifest: Manifest
    scorer: Scorer
    query_encoder: QueryEncoder
    product_encoder: ProductEncoder | None = None  # None: a bundle from before product encoders
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
    scorer = OnnxScorer(path / student, threads, providers, manifest.spec)
    products = product_encoder(path, manifest, threads, providers) if PRODUCT_ENCODER in manifest.models else None
    return LoadedBundle(path, manifest, scorer, query_encoder(path, manifest, threads, providers), products,
                        {"student_file": student})


def no_product_encoder(bundle: object) -> BundleError:
    return BundleError(f"bundle {bundle} has no product encoder; rebuild it with this version's 'hmpps distill'")


def query_encoder(path: Path, manifest: Manifest, threads: int = 1, providers: list[str] | None = None) -> OnnxQueryEncoder:
    """The bundle's query encoder, as the service runs it (offline checks of tail queries use this too)."""
    return OnnxQueryEncoder(Path(path) / manifest.models[QUERY_ENCODER], Path(path) / manifest.models[TOKENIZER],
                            threads, providers)


def product_encoder(path: Path, manifest: Manifest, threads: int = 1,
                    providers: list[str] | None = None) -> OnnxProductEncoder:
    """The bundle's product encoder, as the service runs it for upserts (``hmpps encode`` too)."""
    if PRODUCT_ENCODER not in manifest.models:
        raise no_product_encoder(manifest.version)
    return OnnxProductEncoder(Path(path) / manifest.models[PRODUCT_ENCODER], Path(path) / manifest.models[TOKENIZER],
                              int(manifest.features.get("image_size", 0)), threads, providers, manifest.spec.product_dim)
