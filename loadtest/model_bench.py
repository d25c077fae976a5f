"""``hmpps bench-model``: the student's scoring call for K=10 against its alternatives, in one run.

Rows: student ONNX fp32 and int8 (the service's call), the student in PyTorch
eager, and a MiniLM-L6 int8 cross-encoder over (query, summary) on the same
candidates. Each is timed per request (K candidates, one call) after warm-up,
with the same thread count, and scored on the same test queries for NDCG@4.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.reports import markdown_table


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "calls": len(a)}


def _time(fn: Any, items: list[Any], repeats: int) -> dict[str, float]:
    for it in items[:20]:
        fn(it)  # warm-up
    samples = []
    for r in range(repeats):
        it = items[r % len(items)]
        t = time.perf_counter()
        fn(it)
        samples.append(time.perf_counter() - t)
    return _percentiles(samples)


def machine() -> str:
    import os

    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, onnxruntime {ort.__version__}"


def run_model_bench(pipeline: Path, data: Path, repeats: int = 2000, threads: int = 1, ce_steps: int = 150) -> dict[str, Any]:
    import torch

    from contract.spec import build_inputs, yes_probability
    from distill.features import FeatureTables
    from loadtest.cross_encoder import MAX_TOKENS, export, fine_tune, load_cross_encoder
    from loadtest.peers import TorchStudent
    from service.core.bundle import OnnxScorer, load_bundle, session_options
    from training.artifacts import read_jsonl
    from training.dataset import load_dataset
    from training.metrics import paper_metrics, rerank

    torch.set_num_threads(threads)
    pipeline = Path(pipeline)
    bundle = load_bundle(pipeline / "bundle", threads=threads)
    manifest = bundle.manifest
    ds = load_dataset(data)
    if ds.fingerprint != manifest.dataset_fingerprint:
        from contract.errors import ArtifactMismatch

        raise ArtifactMismatch(f"{data} is not the dataset bundle {manifest.version} was built from")
    feats = pipeline / "bundle" / "features"
    index = json.loads((feats / "index.json").read_text())
    tables = FeatureTables(bundle.spec, index["products"], np.load(feats / "products.npy"), index["queries"],
                           np.load(feats / "queries.npy"))
    summaries = {r["product_id"]: r["summary"] for r in read_jsonl(feats / "summaries.jsonl")}
    scored = read_jsonl(pipeline / "teacher" / "scores.jsonl")
    rows = {r["query_id"]: r for r in ds.queries()}
    test = [s for s in scored if s["split"] == "test"]
    train = [s for s in scored if s["split"] == "train"]
    n_test = int(json.loads((pipeline / "teacher" / "teacher.json").read_text())["scored_queries"]["test_total"])

    def inputs_for(s: dict[str, Any]) -> dict[str, np.ndarray]:
        hist = [p for p in ds.history(rows[s["query_id"]]) if tables.has_product(p)]
        h = tables.product(hist) if hist else np.zeros((0, bundle.spec.product_dim), np.float32)
        return build_inputs(bundle.spec, tables.query(s["query"]), tables.product([c["product_id"] for c in s["candidates"]]), h)

    reqs = [inputs_for(s) for s in test]
    int8 = OnnxScorer(pipeline / "bundle" / manifest.models["student_int8"], threads)
    eager = TorchStudent(pipeline / "distill" / "student.pt", threads).logits  # the same class as the HTTP peer

    def quality(score_fn: Any, items: list[Any]) -> dict[str, Any]:
        ranked = [rerank([c["product_id"] for c in s["candidates"]], list(score_fn(x))) for s, x in zip(test, items, strict=True)]
        miss = n_test - len(test)
        return paper_metrics(ranked + [[]] * miss, [s["target"] for s in test] + ["\0miss"] * miss)

    results: dict[str, Any] = {}
    results["student ONNX fp32"] = _time(bundle.scorer.logits, reqs, repeats) | quality(
        lambda x: yes_probability(bundle.scorer.logits(x)), reqs)
    results["student ONNX int8"] = _time(int8.logits, reqs, repeats) | quality(lambda x: yes_probability(int8.logits(x)), reqs)
    results["student PyTorch eager"] = _time(eager, reqs, max(200, repeats // 4)) | quality(lambda x: yes_probability(eager(x)), reqs)

    # the cross-encoder baseline: fine-tuned on the same train candidates, int8 ONNX, 10 (query, summary) pairs per call
    import onnxruntime as ort

    model, tok = load_cross_encoder()
    pairs = [(s["query"], summaries.get(c["product_id"], "")) for s in train for c in s["candidates"]]
    labels = [int(c["label"]) for s in train for c in s["candidates"]]
    t0 = time.time()
    fine_tune(model, tok, pairs, labels, steps=ce_steps)
    ft_seconds = time.time() - t0
    tmp = pipeline / "bench"
    tmp.mkdir(exist_ok=True)
    ce_int8 = export(model, tok, tmp / "cross_encoder.onnx")
    # the HTTP peer (loadtest.peers) tokenizes with the same vocabulary through `tokenizers`
    import shutil

    from training.pretrained import minilm_dir

    shutil.copyfile(Path(minilm_dir()) / "tokenizer.json", tmp / "cross_encoder_tokenizer.json")
    sess = ort.InferenceSession(str(ce_int8), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    ce_reqs = []
    for s in test:
        enc = tok([s["query"]] * len(s["candidates"]), [summaries.get(c["product_id"], "") for c in s["candidates"]],
                  padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        ce_reqs.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    ce_run = lambda x: sess.run(["score"], x)[0]  # noqa: E731
    results["MiniLM-L6 int8 cross-encoder"] = _time(ce_run, ce_reqs, max(200, repeats // 10)) | quality(ce_run, ce_reqs)
    results["MiniLM-L6 int8 cross-encoder"]["fine_tune_seconds"] = round(ft_seconds, 1)
    return {"machine": machine(), "threads": threads, "k": int(np.median([len(s["candidates"]) for s in test])),
            "test_queries": len(test), "bundle": manifest.version, "dataset": ds.name,
            "first_stage": json.loads((pipeline / "metrics.json").read_text())["first_stage"],
            "teacher": json.loads((pipeline / "metrics.json").read_text())["teacher"], "results": results,
            "cross_encoder_tokens": MAX_TOKENS, "cross_encoder_steps": ce_steps}


def markdown(rep: dict[str, Any], command: str) -> str:
    lines = [f"### Scoring call, K={rep['k']}, {rep['threads']} ORT/torch thread(s), on {rep['dataset']} "
             f"(bundle `{rep['bundle']}`)", "",
             f"Machine: {rep['machine']}. Command: `{command}`", "",
             markdown_table(["scorer", "p50 ms", "p90 ms", "p99 ms", "calls", "NDCG@4", "MRR@8"],
                            [[name, f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", r["calls"],
                              f"{r['NDCG@4']:.4f}", f"{r['MRR@8']:.4f}"] for name, r in rep["results"].items()])]
    fs, t = rep["first_stage"], rep["teacher"]
    ce = rep["results"]["MiniLM-L6 int8 cross-encoder"]["p50_ms"]
    st = rep["results"]["student ONNX fp32"]["p50_ms"]
    lines += ["", f"First stage NDCG@4 {fs['NDCG@4']:.4f}; teacher {t['NDCG@4']:.4f} ({rep['test_queries']} scored test "
              f"queries, misses counted over all {fs['n']}). Cross-encoder: {rep['cross_encoder_tokens']} tokens per pair, "
              f"fine-tuned {rep['cross_encoder_steps']} steps. Student p50 is {ce / st:.0f}x lower than the cross-encoder's.", ""]
    return "\n".join(lines)
