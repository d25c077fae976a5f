"""``hmpps distill``: teacher scores -> student -> ONNX -> bundle.

Reads the pipeline's dataset, first-stage candidates and teacher outputs
(scores.jsonl, stage-1 embeddings, trained vision tower) and writes:

    OUT/metrics.json   student quality (torch, ONNX fp32, int8, tail-query encoder)
    OUT/distill.json   config, parity, timings, kept share of the teacher's gain
    OUT/report.md      the comparison table and the training curve
    OUT/bundle/        what the service loads (format: contract/bundle.py)
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.spec import concat_inputs, yes_probability
from distill.bundle_files import bundle_manifest_fields, write_bundle
from distill.checks import evaluate, export_and_check, export_product_encoder_and_check
from distill.features import FeatureTables
from distill.lists import (
    StudentData,
    TrainingArrays,
    load_student_data,
    request_arrays,
    split_scores,
    training_arrays,
)
from distill.report import report_markdown, round_or_none
from distill.student import Student, StudentConfig
from distill.train import best_val_ndcg4, student_logits, train_student
from training.artifacts import atomic_dir, write_json, write_jsonl
from training.dataset import Dataset
from training.metrics import (
    kept_gain,
    relative_gain,
    rerank,
)
from training.pretrained import minilm_dir


def signal_variants(cfg: StudentConfig) -> list[list[str]]:
    """``cfg.signals``, then each ``try_signals`` group not already in it added on top."""
    return [list(cfg.signals)] + [[*cfg.signals, g] for g in cfg.try_signals if g not in cfg.signals]


def _prepare_variant(sd: StudentData, cfg: StudentConfig, signals: list[str]
                     ) -> tuple[StudentConfig, FeatureTables, TrainingArrays]:
    """One signal variant's config, serving tables and training arrays."""
    vcfg = replace(cfg, signals=signals)
    train_tables, tables = sd.tables(tuple(signals), cfg.cf_dim, cfg.seq_dim)
    return vcfg, tables, training_arrays(train_tables, sd.ds, sd.rows, sd.lists, vcfg, np.random.default_rng(cfg.seed))


def _train_in_process(spec: Any, vcfg: StudentConfig, arrays: TrainingArrays, threads: int
                      ) -> tuple[Student, list[dict[str, Any]]]:
    """``train_student`` in a spawned process: it receives one variant's arrays, never the dataset."""
    torch.set_num_threads(threads)
    return train_student(spec, vcfg, arrays)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_chosen(sd: StudentData, cfg: StudentConfig) -> tuple[Student, list[dict[str, Any]], StudentConfig,
                                                                FeatureTables, dict[str, Any]]:
    """Train the student on each signal variant and keep the one with the best validation NDCG@4 (the same
    seeded validation lists for every variant; on a tie, the earlier, smaller one). Returns the model, its
    curve, its config (``signals`` as chosen), its serving tables and the choice's record.

    With several variants and at least as many cores, each variant trains in a process of its own:
    a student's steps are small matrix products that two threads speed up by a quarter only (23.4 against
    30.3 s per epoch at 20,000 users), so two one-thread students side by side take 35% less time than one
    after the other. Each process gets an equal share of the cores; the curves equal those of training in
    turn on that many threads (tested).
    """
    variants = signal_variants(cfg)
    parallel = len(variants) > 1 and cfg.parallel_variants and cpu_cores() >= len(variants)
    trained = []
    if parallel:
        # spawned, not forked: a child gets its variant's arrays (a few hundred MB at 100,000 users) and none of
        # the parent's pages; with forked children the three processes' resident sets reached 9.8 GB at
        # 100,000 users (one process: 3.2 GB), as each child mapped and copied the parent's dataset
        prepared = [_prepare_variant(sd, cfg, signals) for signals in variants]
        threads = max(1, cpu_cores() // len(variants))
        with ProcessPoolExecutor(len(variants), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_train_in_process, tables.spec, vcfg, arrays, threads) for vcfg, tables, arrays in prepared]
            for job, (vcfg, tables, _) in zip(jobs, prepared, strict=True):
                model, curve = job.result()
                trained.append((model, curve, vcfg, tables, best_val_ndcg4(curve)))
    else:
        for signals in variants:
            vcfg, tables, arrays = _prepare_variant(sd, cfg, signals)
            model, curve = train_student(tables.spec, vcfg, arrays)
            trained.append((model, curve, vcfg, tables, best_val_ndcg4(curve)))
            if trained[-1][4] is None:  # too few lists to validate on: nothing to choose with, keep ``signals``
                break
    best: tuple[Student, list[dict[str, Any]], StudentConfig, FeatureTables] | None = None
    best_val: float | None = None
    record = []
    for model, curve, vcfg, tables, val in trained:
        record.append({"signals": vcfg.signals, "val_NDCG@4": val})
        if best is None or (val is not None and best_val is not None and val > best_val):
            best, best_val = (model, curve, vcfg, tables), val
        if val is None:
            break
    assert best is not None  # signal_variants always holds cfg.signals
    model, curve, chosen, tables = best
    return model, curve, chosen, tables, {"variants": record, "chosen": list(chosen.signals),
                                          "processes": len(variants) if parallel else 1}


@dataclass
class DistillResult:
    metrics: dict[str, Any]  # metrics.json: student (torch), student_onnx, student_int8, student_tail_queries
    info: dict[str, Any]  # distill.json
    bundle_dir: Path


def run_distill(data: Dataset | Path, teacher_dir: Path, out: Path, cfg: StudentConfig | None = None,
                bundle_dir: Path | None = None) -> DistillResult:
    """Distill; the bundle lands in ``bundle_dir`` (default OUT/bundle), each directory renamed into place whole."""
    cfg = cfg or StudentConfig()
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, teacher_dir = Path(out), Path(teacher_dir)
    timings: dict[str, float] = {}
    t = time.time()
    sd = load_student_data(data, teacher_dir, cfg.max_lists, cfg.seed)
    ds, teacher, test, rows, minilm = sd.ds, sd.teacher, sd.test, sd.rows, sd.minilm
    lists, lists_source = sd.lists, sd.lists_source
    timings["features"] = time.time() - t

    t = time.time()
    model, curve, cfg, tables, choice = train_chosen(sd, cfg)
    timings["train"] = time.time() - t

    test_inputs = concat_inputs([request_arrays(tables, ds, rows[s.query_id], s) for s in test])
    torch_logits = student_logits(model, test_inputs)

    with atomic_dir(out) as tmp:
        t = time.time()
        work = tmp / "work"
        work.mkdir()
        exported = export_and_check(model, minilm, tables, ds, rows, test, test_inputs, torch_logits, cfg.seed, work)
        product_encoder = export_product_encoder_and_check(minilm, tables, ds, teacher, rows, test, cfg.seed, work)
        timings["export"] = time.time() - t

        metrics = evaluate(test, sd.n_test, torch_logits, exported)
        fs_metrics = teacher.first_stage_metrics
        version = write_bundle(tmp / "bundle", ds, tables, {
            "student.onnx": work / "student.onnx", "student.int8.onnx": work / "student.int8.onnx",
            "query_encoder.onnx": work / "query_encoder.onnx", "product_encoder.onnx": work / "product_encoder.onnx",
            "tokenizer/tokenizer.json": minilm_dir() / "tokenizer.json",
        }, bundle_manifest_fields(ds, tables, teacher, cfg, metrics))
        torch.save({"config": cfg.to_dict(), "spec": asdict(tables.spec), "state_dict": model.state_dict()},
                   tmp / "student.pt")
        shutil.rmtree(work)
        detail = {
            "stage": "distill", "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "bundle_version": version,
            "teacher_dir": str(teacher_dir), "config": cfg.to_dict(), "spec": tables.spec.to_dict(),
            "train_rows": int(sum(len(s.candidates) for s in lists)), "train_queries": len(lists),
            "train_lists_available": sd.lists_available,
            "train_source": lists_source, "teacher_scored_pairs": sum(s.teacher_scored for s in lists),
            "test_queries_scored": len(test), "test_queries_total": sd.n_test,
            "parity_max_abs_diff": exported.parity, "query_encoder": exported.query_encoder,
            "product_encoder": product_encoder,
            "int8_max_abs_diff": float(np.abs(exported.logits_int8 - exported.logits_fp32).max()),
            "signal_choice": choice, "curve": curve, "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.time() - t0, 1)},
            "kept_gain": {k: round_or_none(kept_gain(m, teacher.metrics, fs_metrics)) for k, m in metrics.items()},
            "relative_gain_vs_first_stage": {k: round_or_none(relative_gain(m, fs_metrics)) for k, m in metrics.items()}
            | {"teacher": round_or_none(relative_gain(teacher.metrics, fs_metrics))},
        }
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "distill.json", detail)
        # per-query rankings of the shipped (ONNX fp32) student: paired comparisons read them
        write_jsonl(tmp / "test_rankings.jsonl", (
            {"query_id": s.query_id, "ranked": rerank(s.product_ids, list(sc)), "candidates": s.product_ids,
             "scores": [round(float(x), 6) for x in sc]}
            for s, sc in zip(test, split_scores(yes_probability(exported.logits_fp32), test), strict=True)))
        (tmp / "report.md").write_text(report_markdown(ds.name, fs_metrics, teacher.metrics, metrics, detail))
    final_bundle = out / "bundle"
    if bundle_dir is not None and Path(bundle_dir).resolve() != final_bundle.resolve():
        with atomic_dir(bundle_dir) as dst:
            dst.rmdir()
            final_bundle.rename(dst)
        detail["bundle_dir"] = str(bundle_dir)
        write_json(out / "distill.json", detail)
        final_bundle = Path(bundle_dir)
    return DistillResult(metrics, detail, final_bundle)
