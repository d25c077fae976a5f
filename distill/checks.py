"""Export and its checks: ONNX parity with PyTorch, int8, the tail-query and product encoders, and the
student's metrics in each form it ships in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.products import record_text
from contract.spec import concat_inputs, yes_probability
from distill.export import (
    ProductEncoderModule,
    QueryEncoderModule,
    export_product_encoder,
    export_query_encoder,
    export_student,
    fit_projection,
    onnx_logits,
    quantize_int8,
)
from distill.features import FeatureTables, MiniLM, load_vision_tower, unit
from distill.lists import request_arrays, split_scores
from distill.student import Student
from service.core.bundle import OnnxProductEncoder, OnnxQueryEncoder, OnnxScorer
from training.dataset import Dataset
from training.metrics import (
    paired_bootstrap,
    paper_metrics,
    rerank,
)
from training.pretrained import minilm_dir
from training.teacher.run import TeacherRun
from training.teacher.scored import ScoredList

PARITY_TOL = 1e-4


@dataclass
class Exported:
    """The exported models in ``work/`` and how closely each reproduces what it was exported from."""

    logits_fp32: np.ndarray  # ONNX fp32 on the test inputs
    logits_int8: np.ndarray  # ONNX int8, called per request as the service calls it
    logits_tail: np.ndarray  # ONNX fp32 with every test query through the tail-query encoder
    parity: float
    query_encoder: dict[str, Any]


def export_and_check(model: Student, minilm: MiniLM, tables: FeatureTables, ds: Dataset,
                     rows: dict[str, dict[str, Any]], test: list[ScoredList], test_inputs: dict[str, np.ndarray],
                     torch_logits: np.ndarray, seed: int, work: Path) -> Exported:
    """Student to ONNX (parity-checked), int8, and the tail-query encoder fitted into the stage-1 space."""
    export_student(model, test_inputs, work / "student.onnx")
    onnx_fp32 = onnx_logits(work / "student.onnx", test_inputs)
    parity = float(np.abs(onnx_fp32 - torch_logits).max())
    if parity > PARITY_TOL:
        raise RuntimeError(f"ONNX/PyTorch parity failed: max abs diff {parity:.2e} > {PARITY_TOL}")
    quantize_int8(work / "student.onnx", work / "student.int8.onnx")
    # per request, as the service calls it: dynamic int8 picks activation ranges per call
    int8_scorer = OnnxScorer(work / "student.int8.onnx")
    test_parts = [request_arrays(tables, ds, rows[s.query_id], s) for s in test]
    onnx_int8 = np.concatenate([int8_scorer.logits(p) for p in test_parts]) if test_parts else onnx_fp32

    qe = QueryEncoderModule(minilm.model, minilm.dim, tables.spec.sel_dim)
    sel = tables.spec
    qe_text = np.concatenate([tables.products[:, :sel.text_dim], tables.query_features[:, :sel.text_dim]])
    qe_target = np.concatenate([tables.products[:, sel.product_sel], tables.query_features[:, sel.query_sel]])
    qe_curve = fit_projection(qe, qe_text, qe_target, seed=seed)
    export_query_encoder(qe, minilm.tokenizer, work / "query_encoder.onnx")
    # the test queries through the ONNX encoder (one call each, as served): every query of a large shop
    # would cost a call per distinct query for checks the test queries already make
    asked = sorted({rows[s.query_id]["query"] for s in test})
    at = np.array([tables.query_row(q) for q in asked], np.int64)
    encoded = _tail_query_features(work / "query_encoder.onnx", asked)
    known = tables.query_features[at]
    qe_parity = float(np.abs(encoded[:, :sel.text_dim] - known[:, :sel.text_dim]).max())
    qe_cos = float((unit(encoded[:, sel.query_sel]) * known[:, sel.query_sel]).sum(1).mean())
    tail = tables.query_features.copy()
    tail[at] = encoded
    tail_tables = FeatureTables(tables.spec, tables.product_ids, tables.products, tables.queries, tail)
    tail_inputs = concat_inputs([request_arrays(tail_tables, ds, rows[s.query_id], s) for s in test])
    onnx_tail = onnx_logits(work / "student.onnx", tail_inputs)
    return Exported(onnx_fp32, onnx_int8, onnx_tail, parity,
                    {"text_max_abs_diff": qe_parity, "sel_cosine_known_queries": qe_cos, "final_loss": qe_curve[-1],
                     "checked_queries": len(asked)})


def _tail_query_features(path: Path, queries: list[str]) -> np.ndarray:
    enc = OnnxQueryEncoder(path, minilm_dir() / "tokenizer.json")
    return np.stack([enc.encode(q) for q in queries]).astype(np.float32)


def encoder_image_size(teacher_cfg: dict[str, Any]) -> int:
    """Pixels per side the product encoder reads (1 for a text-only teacher: its image input is unused)."""
    return int(teacher_cfg.get("image_size", 1)) if teacher_cfg.get("vision") == "cnn" else 1


HELDOUT_SHARE = 0.1  # products the product encoder's projection never sees (at most HELDOUT_MAX): its quality check
HELDOUT_MAX = 2_000
# products encoded end to end through the exported ONNX encoder (half held out, half fitted, a seeded
# sample): MiniLM costs about 19 ms a product here, so a 20,000-product catalogue is not encoded a second
# time only to check it. The held-out products' encoded features for the student's check are the encoder's
# own projection of their offline content features, which the sample shows the ONNX graph reproduces.
CHECK_PRODUCTS = 500


def export_product_encoder_and_check(minilm: MiniLM, tables: FeatureTables, ds: Dataset, teacher: TeacherRun,
                                     rows: dict[str, dict[str, Any]], test: list[ScoredList],
                                     seed: int, work: Path) -> dict[str, Any]:
    """The product encoder (new products without retraining), fitted without a held-out tenth of the
    catalogue; then the student on the test queries whose candidates include held-out products, with
    their encoded features and with the offline ones."""
    spec = tables.spec
    cnn = load_vision_tower(teacher.dir, teacher.config)
    module = ProductEncoderModule(minilm.model, spec.text_dim, cnn, spec.image_dim, spec.sel_dim)
    rng = np.random.default_rng(seed + 17)
    perm = rng.permutation(len(tables.product_ids))
    n_held = min(HELDOUT_MAX, max(1, int(HELDOUT_SHARE * len(perm))))
    heldout = np.zeros(len(perm), dtype=bool)
    heldout[perm[:n_held]] = True
    half = CHECK_PRODUCTS // 2
    checked = np.sort(np.concatenate([perm[: min(n_held, half)], perm[n_held: n_held + half]]))
    rest = tables.products[:, : spec.content_dim - spec.sel_dim]
    curve = fit_projection(module, rest[~heldout], tables.products[~heldout][:, spec.product_sel], seed=seed)
    image_size = encoder_image_size(teacher.config)
    export_product_encoder(module, minilm.tokenizer, image_size, work / "product_encoder.onnx")
    encoder = OnnxProductEncoder(work / "product_encoder.onnx", minilm_dir() / "tokenizer.json", image_size)
    pids = [tables.product_ids[i] for i in checked]
    encoded = encoder.encode([(record_text(ds.products[p]), ds.image_path(p)) for p in pids])  # rows of ``checked``
    offline = tables.products[checked]
    with torch.no_grad():  # what the encoder computes from a product's content features, in PyTorch
        projected = module.project(torch.from_numpy(rest)).numpy()
    cos = (unit(encoded[:, spec.product_sel]) * offline[:, spec.product_sel]).sum(1)
    fitted = ~heldout[checked]
    report: dict[str, Any] = {
        "text_max_abs_diff": float(np.abs(encoded[:, : spec.text_dim] - offline[:, : spec.text_dim]).max()),
        "image_max_abs_diff": float(np.abs(encoded[:, spec.text_dim: spec.content_dim - spec.sel_dim]
                                           - rest[checked][:, spec.text_dim:]).max()),
        "sel_onnx_vs_torch_max_abs_diff": float(np.abs(encoded[:, spec.product_sel] - projected[checked]).max()),
        "sel_cosine_fitted": float(cos[fitted].mean()) if fitted.any() else None,
        "sel_cosine_heldout": float(cos[~fitted].mean()),
        "final_loss": curve[-1], "image_size": image_size if cnn is not None else 0,
        "heldout_products": int(heldout.sum()), "checked_products": len(checked),
    }
    held = {p for p, h in zip(tables.product_ids, heldout, strict=True) if h}
    touched = [s for s in test if held & set(s.product_ids)]
    if touched:
        swapped = tables.products.copy()
        # the encoder's projection replaces the offline stage-1 part; content, popularity and co-purchase
        # stay as computed offline (the encoder reproduces the content part: text_max_abs_diff)
        swapped[np.flatnonzero(heldout), spec.product_sel] = projected[heldout]
        enc_tables = FeatureTables(spec, tables.product_ids, swapped, tables.queries, tables.query_features)
        ranked = {}
        for name, t in (("offline", tables), ("encoded", enc_tables)):
            inputs = concat_inputs([request_arrays(t, ds, rows[s.query_id], s) for s in touched])
            scores = split_scores(yes_probability(onnx_logits(work / "student.onnx", inputs)), touched)
            ranked[name] = [rerank(s.product_ids, list(sc)) for s, sc in zip(touched, scores, strict=True)]
        targets = [s.target for s in touched]
        report["heldout_queries"] = {
            "queries": len(touched), "metrics": {k: paper_metrics(r, targets) for k, r in ranked.items()},
            "encoded_minus_offline": paired_bootstrap(ranked["encoded"], ranked["offline"], targets)}
    return report


def evaluate(test: list[ScoredList], n_test: int, torch_logits: np.ndarray, exported: Exported) -> dict[str, Any]:
    """The paper's metrics of each form of the student, over every test query."""
    forms = {"student": torch_logits, "student_onnx": exported.logits_fp32, "student_int8": exported.logits_int8,
             "student_tail_queries": exported.logits_tail}
    return {name: _rerank_metrics(test, split_scores(yes_probability(logits), test), n_test)
            for name, logits in forms.items()}


def _rerank_metrics(test: list[ScoredList], scores: list[np.ndarray], n_test: int) -> dict[str, Any]:
    ranked = [rerank(s.product_ids, list(sc)) for s, sc in zip(test, scores, strict=True)]
    missing = n_test - len(test)
    return paper_metrics(ranked + [[]] * missing, [s.target for s in test] + ["\0miss"] * missing)
