"""Teacher throughput and the dtype's effect on its scores, from a trained teacher run.

    .venv/bin/python scripts/bench_teacher.py --data runs/office/data --candidates runs/office/hem \\
        --teacher runs/office/t1000 --queries 30

Prints a Markdown table:
- training and scoring throughput of the run itself (``teacher.json``: seconds per stage over its
  training queries and its scored queries);
- scoring the same ``--queries`` test queries (target in the top 10) with the trained weights in each
  ``--dtypes`` entry: seconds per query (after one warm-up query), and against float32 the largest and
  99th-percentile difference of P(yes), how often the top candidate is the same, and NDCG@4.
  An entry is ``DTYPE`` or ``DTYPE:VARIANT``, with VARIANT one of:
  - ``float32-adapters``: bfloat16 weights beside float32 adapters (as before ``inference_adapters``);
  - ``merged-adapters``: the LoRA adapters merged into the LM's weights (in the LM's dtype);
  - ``int8-dynamic``: adapters merged, then every linear layer of the LM int8 with per-channel weights and
    dynamically quantized activations (torch.ao, on the LM loaded in float32: write ``float32:int8-dynamic``);
  - ``fig6-prompt`` / ``compact-prompt``: the prompt form (``compact_prompt``), whatever the run trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.metrics import paper_metrics, rerank  # noqa: E402
from training.teacher import scoring  # noqa: E402
from training.teacher.config import TeacherConfig  # noqa: E402
from training.teacher.scoring import TrainedTeacher, load_trained_teacher, score_rows  # noqa: E402

VARIANTS = ("", "float32-adapters", "merged-adapters", "int8-dynamic", "fig6-prompt", "compact-prompt")


def _variant(t: TrainedTeacher, variant: str) -> AbstractContextManager[object]:
    """Apply ``variant`` to the loaded teacher; the context to score it in."""
    if variant == "float32-adapters":
        return mock.patch.object(scoring, "inference_adapters", lambda *_: nullcontext())
    if variant in ("merged-adapters", "int8-dynamic"):
        t.backbone.lm.merge_adapter()
    if variant == "int8-dynamic":
        import torch

        torch.ao.quantization.quantize_dynamic(t.backbone._decoder(), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                                               inplace=True)
    return nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--candidates", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    info = json.loads((a.teacher / "teacher.json").read_text())
    secs, n_train = info["seconds"], info["train_queries"]
    scored = info["scored_queries"]
    print("| run (teacher.json) | queries | seconds | seconds per query |\n|---|---:|---:|---:|")
    for key, n in (("stage1_train", n_train), ("stage2_train", n_train), ("embed", None),
                   ("score", scored["test"] + scored["train"])):
        per = f"{secs[key] / n:.2f}" if n else ""
        print(f"| {key} | {n or ''} | {secs[key]} | {per} |")
    base = TeacherConfig(**info["config"])
    results = {}
    for spec in a.dtypes.split(","):
        dtype, _, variant = spec.partition(":")
        if variant not in VARIANTS:
            raise SystemExit(f"--dtypes {spec!r}: write DTYPE or DTYPE:VARIANT, VARIANT one of {', '.join(VARIANTS[1:])}")
        cfg = replace(base, dtype="float32" if variant == "int8-dynamic" else dtype, threads=a.threads)
        if variant.endswith("-prompt"):
            cfg = replace(cfg, compact_prompt=variant == "compact-prompt")
        t = load_trained_teacher(a.data, a.candidates, a.teacher, cfg)
        same = _variant(t, variant)
        tests = [r for r in t.ds.queries("test") if r["query_id"] in t.fs.rows and r["product_id"] in t.fs.ids(r["query_id"])]
        rows = tests[: a.queries + 1]
        with same:
            score_rows(t.backbone, t.factory, t.fs, rows[:1], "selected", cfg.seed, "warm-up")
            start = time.perf_counter()
            lines = score_rows(t.backbone, t.factory, t.fs, rows[1:], "selected", cfg.seed, f"scoring in {spec}")
        results[spec] = (time.perf_counter() - start) / len(lines), lines
    print(f"\n| dtype | s per scored query (10 candidates) | max abs P(yes) diff vs float32 | p99 | same top-1 | NDCG@4 ({a.queries} queries) |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = results.get("float32")
    for dtype, (per, lines) in results.items():
        p = np.array([c["teacher_score"] for s in lines for c in s["candidates"]])
        ndcg = paper_metrics([rerank([c["product_id"] for c in s["candidates"]], [c["teacher_score"] for c in s["candidates"]])
                              for s in lines], [s["target"] for s in lines])["NDCG@4"]
        if ref is None or dtype == "float32":
            print(f"| {dtype} | {per:.2f} | | | | {ndcg:.4f} |")
            continue
        q = np.array([c["teacher_score"] for s in ref[1] for c in s["candidates"]])
        diff = np.abs(p - q)
        top = np.mean([max(s["candidates"], key=lambda c: c["teacher_score"])["product_id"]
                       == max(r["candidates"], key=lambda c: c["teacher_score"])["product_id"]
                       for s, r in zip(lines, ref[1], strict=True)])
        print(f"| {dtype} | {per:.2f} | {diff.max():.4f} | {np.percentile(diff, 99):.4f} | {top:.0%} | {ndcg:.4f} |")


if __name__ == "__main__":
    main()
