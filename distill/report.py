"""``report.md`` of a distillation: the comparison table, the training set, parity and timings."""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.reports import markdown_table
from training.metrics import (
    PAPER_KEYS,
)


def report_markdown(name: str, fs: dict[str, Any], teacher: dict[str, Any], metrics: dict[str, Any], d: dict[str, Any]) -> str:
    rows = [("first stage", fs), ("teacher", teacher)] + list(metrics.items())
    teacher_gain = teacher["NDCG@4"] - fs["NDCG@4"]

    def kept(label: str) -> str:
        share = d["kept_gain"].get(label) if teacher_gain > 0 else None  # a share of a loss means nothing
        return "" if share is None else f"{share:.1%}"
    lines = [f"# Distillation on {name}", "", f"Bundle version `{d['bundle_version']}`.", "",
             markdown_table(["model", *PAPER_KEYS, "n", "kept share of teacher gain (NDCG@4)"],
                            [[label, *(f"{m[k]:.4f}" for k in PAPER_KEYS), m["n"], kept(label)] for label, m in rows])]
    unused = "" if d["config"].get("use_teacher", True) else ", unused: use_teacher false"
    lines += ["", f"- trained on {d['train_queries']} lists ({d['train_rows']} pairs, {d.get('teacher_scored_pairs', 0)} "
              f"of them with a teacher logit{unused}) from {d.get('train_source', 'teacher-scored train lists')}, plus "
              f"{d['config']['extra_negatives']} random negatives each (hard label only)",
              f"- signals: {', '.join(d['spec'].get('signals') or []) or 'none'}{_choice(d.get('signal_choice'))}",
              *([f"- epochs: {len(d['curve'])} run, the best validation NDCG@4 "
                 f"({max(c['val_NDCG@4'] for c in d['curve']):.4f}) kept"] if d["curve"] and "val_NDCG@4" in d["curve"][0]
                else []),
              f"- ONNX fp32 vs PyTorch max abs diff on {d['test_queries_scored']} test queries: {d['parity_max_abs_diff']:.2e}",
              f"- int8 vs fp32 max abs logit diff: {d['int8_max_abs_diff']:.3f}",
              f"- query encoder: mean cosine to stage-1 query embeddings {d['query_encoder']['sel_cosine_known_queries']:.3f}; "
              "`student_tail_queries` scores every test query through it, as if none were known",
              *_product_encoder_lines(d["product_encoder"]),
              "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in d["seconds"].items()), ""]
    return "\n".join(lines)


def _choice(choice: dict[str, Any] | None) -> str:
    """How the signals were chosen, when distillation tried more than one set."""
    if not choice or len(choice["variants"]) < 2:
        return ""
    tried = "; ".join(f"{'+'.join(v['signals'][-1:]) if i else 'configured'} "
                      f"{'n/a' if v['val_NDCG@4'] is None else format(v['val_NDCG@4'], '.4f')}"
                      for i, v in enumerate(choice["variants"]))
    side = f"; trained side by side in {choice['processes']} processes" if choice.get("processes", 1) > 1 else ""
    return f" (chosen on validation NDCG@4: {tried}{side})"


def _product_encoder_lines(pe: dict[str, Any]) -> list[str]:
    onnx = pe.get("sel_onnx_vs_torch_max_abs_diff")  # absent in runs before the sampled check
    lines = [f"- product encoder (new products without retraining): text part vs offline max abs diff "
             f"{pe['text_max_abs_diff']:.1e}, image part {pe['image_max_abs_diff']:.1e}; cosine of its stage-1 "
             f"projection to the teacher's: "
             f"{'n/a' if pe['sel_cosine_fitted'] is None else format(pe['sel_cosine_fitted'], '.3f')} on the products "
             f"it was fitted on, {pe['sel_cosine_heldout']:.3f} on held-out ones, over "
             f"{pe.get('checked_products', 'all')} products encoded end to end (the projection was fitted without "
             f"{pe['heldout_products']} held-out products"
             f"{'' if onnx is None else f'; its ONNX graph vs PyTorch max abs diff {onnx:.1e}'})"]
    if h := pe.get("heldout_queries"):
        d = h["encoded_minus_offline"]
        lines.append(f"- the student on the {h['queries']} test queries whose candidates include held-out products: "
                     f"NDCG@4 {h['metrics']['encoded']['NDCG@4']:.4f} with their encoded features, "
                     f"{h['metrics']['offline']['NDCG@4']:.4f} with the offline ones (difference {d['diff']:+.4f}, "
                     f"95% interval [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}])")
    return lines


def round_or_none(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)
