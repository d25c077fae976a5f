"""The student bundle format: what distillation writes and the service loads.

    manifest.json             format, version, dataset fingerprint, spec, models, features, sha256 of every file
    student.onnx              fusion network, dynamic batch (fp32)
    student.int8.onnx         the same, dynamic int8 quantization
    query_encoder.onnx        MiniLM-L6 + projection for tail queries
    tokenizer/tokenizer.json  the query encoder's tokenizer
    features/                 what ``hmpps publish`` writes to Redis

The manifest is typed (``Manifest``) but keeps its JSON layout: the fields that
both sides read are attributes; the reports that only people read (metrics,
configs) ride along in ``extra`` untouched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.constants import HISTORY_CAP
from contract.errors import BundleError
from contract.reports import write_json
from contract.spec import FeatureSpec

FORMAT = "hmpps-bundle/1"
MANIFEST = "manifest.json"
REQUIRED = ("version", "dataset_fingerprint", "spec", "files", "models")
# model roles -> file names inside the bundle (the ``models`` mapping of the manifest)
STUDENT, STUDENT_INT8, QUERY_ENCODER, TOKENIZER = "student", "student_int8", "query_encoder", "tokenizer"
PRODUCT_ENCODER = "product_encoder"  # new products without retraining (bundles from before it lack one)
# feature roles -> files under features/ (the ``features`` mapping; ``history_cap`` rides with them)
FEATURE_FILES = ("products", "queries", "index", "summaries", "histories")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to it (sorted)."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def content_version(prefix: str, digests: dict[str, str]) -> str:
    """A version that names the content: the same files always give the same version."""
    joined = "".join(f"{k}:{v}" for k, v in sorted(digests.items()))
    return f"{prefix}-{hashlib.sha256(joined.encode()).hexdigest()[:12]}"


@dataclass
class Manifest:
    version: str
    dataset: str
    dataset_fingerprint: str
    spec: FeatureSpec
    models: dict[str, str]
    features: dict[str, Any]
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # teacher, student_config, metrics: for people

    @property
    def history_cap(self) -> int:
        return int(self.features.get("history_cap", HISTORY_CAP))

    def student_file(self, int8: bool = False) -> str:
        return self.models[STUDENT_INT8] if int8 and STUDENT_INT8 in self.models else self.models[STUDENT]

    def to_dict(self) -> dict[str, Any]:
        # key order as the first writer had it, so manifests stay byte-identical
        return {"dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint, "spec": self.spec.to_dict(),
                "models": self.models, "features": self.features} | self.extra | {
                "format": FORMAT, "version": self.version, "files": self.files}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise BundleError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}")
        for key in REQUIRED:
            if key not in d:
                raise BundleError(f"{where} lacks the field {key!r}")
        try:
            spec = FeatureSpec.from_dict(d["spec"])
        except (KeyError, ValueError, TypeError) as e:
            raise BundleError(f"{where}: bad spec in manifest: {e}") from None
        known = {"dataset", "dataset_fingerprint", "spec", "models", "features", "format", "version", "files"}
        return cls(version=str(d["version"]), dataset=str(d.get("dataset", "")),
                   dataset_fingerprint=str(d["dataset_fingerprint"]), spec=spec, models=dict(d["models"]),
                   features=dict(d.get("features", {})), files=dict(d["files"]),
                   extra={k: v for k, v in d.items() if k not in known})


def write_manifest(bundle: Path, version_prefix: str, dataset: str, dataset_fingerprint: str, spec: FeatureSpec,
                   models: dict[str, str], features: dict[str, Any], extra: dict[str, Any]) -> Manifest:
    """Hash every file already in ``bundle``, name the version after them, write manifest.json last."""
    bundle = Path(bundle)
    digests = file_digests(bundle)
    # the same files stored another way are another version: their Redis keys must not mix
    named = digests | ({"spec:storage": spec.storage} if spec.storage != "float32" else {})
    manifest = Manifest(content_version(version_prefix, named), dataset, dataset_fingerprint, spec, models,
                        features, digests, extra)
    write_json(bundle / MANIFEST, manifest.to_dict())
    return manifest


def read_manifest(bundle: Path) -> Manifest:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: {MANIFEST} is missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{path} is not a JSON object")
    return Manifest.from_dict(doc, str(path))


def verify_bundle(bundle: Path) -> Manifest:
    """Check every file's sha256 against the manifest; raise naming the first broken or unlisted file."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    for rel, digest in sorted(manifest.files.items()):
        path = bundle / rel
        if not path.is_file():
            raise BundleError(f"bundle {bundle}: {rel} is missing")
        if sha256_file(path) != digest:
            raise BundleError(f"bundle {bundle}: {rel} fails its sha256 check (tampered or truncated)")
    listed = set(manifest.files) | {MANIFEST}
    extra = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*")
                   if p.is_file() and str(p.relative_to(bundle)) not in listed)
    if extra:
        raise BundleError(f"bundle {bundle}: {extra[0]} is not listed in the manifest")
    return manifest


