"""The bundle's files: models copied, features written, the manifest last (format: ``contract.bundle``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from contract.bundle import PRODUCT_ENCODER, QUERY_ENCODER, STUDENT, STUDENT_INT8, TOKENIZER, write_manifest
from contract.constants import HISTORY_CAP
from contract.products import summary_text
from distill.checks import encoder_image_size
from distill.features import FeatureTables
from distill.student import StudentConfig
from training.artifacts import write_json, write_jsonl
from training.dataset import Dataset
from training.teacher.run import TeacherRun


def write_bundle(dst: Path, ds: Dataset, tables: FeatureTables, files: dict[str, Path], fields: dict[str, Any]) -> str:
    """Copy models, write features, then the manifest (every file's sha256; version named after them)."""
    (dst / "tokenizer").mkdir(parents=True)
    (dst / "features").mkdir()
    for rel, src in files.items():
        shutil.copyfile(src, dst / rel)
    np.save(dst / "features" / "products.npy", tables.products)
    np.save(dst / "features" / "queries.npy", tables.query_features)
    write_json(dst / "features" / "index.json", {"products": tables.product_ids, "queries": tables.queries})
    write_jsonl(dst / "features" / "summaries.jsonl",
                ({"product_id": p, "summary": summary_text(ds.products[p].get("description") or "",
                                                           ds.products[p].get("summary"))}
                 for p in tables.product_ids))
    write_jsonl(dst / "features" / "histories.jsonl", _histories(ds))
    manifest = write_manifest(dst, slug(ds.name), ds.name, ds.fingerprint, tables.spec, **fields)
    return manifest.version


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())[:32].strip("-") or "bundle"


def _histories(ds: Dataset) -> list[dict[str, Any]]:
    """Each user's train-split purchases, newest first and capped, with their times: what the service
    knows before the test period (publish seeds the live histories with it)."""
    rows = []
    for user, seq in sorted(ds.by_user().items()):
        train = [r for r in seq if r["split"] == "train"][::-1][:HISTORY_CAP]
        rows.append({"user_id": user, "history": [r["product_id"] for r in train],
                     "timestamps": [r["timestamp"] for r in train]})
    return rows


def bundle_manifest_fields(ds: Dataset, tables: FeatureTables, teacher: TeacherRun, cfg: StudentConfig,
                           metrics: dict[str, Any]) -> dict[str, Any]:
    tcfg = teacher.config
    return {
        "models": {STUDENT: "student.onnx", STUDENT_INT8: "student.int8.onnx",
                   QUERY_ENCODER: "query_encoder.onnx", PRODUCT_ENCODER: "product_encoder.onnx",
                   TOKENIZER: "tokenizer/tokenizer.json"},
        "features": {"products": "features/products.npy", "queries": "features/queries.npy",
                     "index": "features/index.json", "summaries": "features/summaries.jsonl",
                     "histories": "features/histories.jsonl", "history_cap": HISTORY_CAP,
                     "image_size": encoder_image_size(tcfg)},
        "extra": {
            "teacher": {"lm": tcfg["lm"], "vision": tcfg["vision"], "k_s1": tcfg["k_s1"], "k_s2": tcfg["k_s2"]},
            "student_config": cfg.to_dict(),
            "metrics": {"first_stage": teacher.first_stage_metrics, "teacher": teacher.metrics} | metrics,
        },
    }
