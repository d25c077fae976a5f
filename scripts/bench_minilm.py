#!/usr/bin/env python
"""How close distill's product-text encoding (MiniLM-L6, float32) runs to this CPU's float32 matmul rate.

Prints, for the thread count given: MiniLM's products per second and FLOP rate on full-length texts
(``TEXT_MAX_TOKENS``; the FLOPs counted by ``torch.utils.flop_counter``, not estimated), and the rate of a
large float32 matmul on the same threads, the most a dense model can expect here. With ``--onnx``, a
bundle's ``product_encoder.onnx`` (the same MiniLM exported, with the image tower and projection) times
the same token batch on ONNX Runtime, products without images. Usage:

    .venv/bin/python scripts/bench_minilm.py --threads 2 --batches 8 [--onnx BUNDLE/product_encoder.onnx]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from contract.products import TEXT_MAX_TOKENS
from distill.features import MiniLM


def matmul_rate(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def onnx_seconds(path: Path, batch: dict[str, torch.Tensor], threads: int, repeats: int) -> float:
    """Seconds per call of a bundle's product encoder on ``batch``'s tokens (no images)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name: i for i in sess.get_inputs()}
    missing = {"input_ids", "attention_mask", "pixels", "has_image"} - set(names)
    if missing:
        raise SystemExit(f"{path} is not a bundle's product encoder: no input {', '.join(sorted(missing))}")
    n = int(batch["input_ids"].shape[0])
    size = int(names["pixels"].shape[-1])
    feed = {k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in names}
    feed |= {"pixels": np.zeros((n, 3, size, size), np.float32), "has_image": np.zeros((n, 1), np.float32)}
    sess.run(None, feed)  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, feed)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="texts per call, as distill encodes them")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--onnx", type=Path, help="a bundle's product_encoder.onnx, timed on the same tokens")
    args = ap.parse_args()
    if args.onnx is not None and not args.onnx.is_file():
        raise SystemExit(f"--onnx {args.onnx}: no such file")
    if args.threads < 1 or args.batch < 1 or args.batches < 1:
        raise SystemExit("--threads, --batch and --batches must be at least 1")
    torch.set_num_threads(args.threads)
    enc = MiniLM()
    # a text long enough to be truncated at TEXT_MAX_TOKENS, as every generated shop's product text is
    text = " ".join(f"word{i}" for i in range(4 * TEXT_MAX_TOKENS))
    texts = [text] * args.batch
    batch = enc.tokenizer(texts, padding=True, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        enc.model(**batch)  # warm-up
        with FlopCounterMode(display=False) as counter:
            enc.model(**batch)
        flops = counter.get_total_flops()
        t = time.perf_counter()
        for _ in range(args.batches):
            enc.model(**batch)
        seconds = (time.perf_counter() - t) / args.batches
    peak = matmul_rate(2048, 10)
    onnx = {}
    if args.onnx is not None:
        secs = onnx_seconds(args.onnx, batch, args.threads, args.batches)
        onnx = {"onnx_s_per_batch": round(secs, 3), "onnx_vs_torch": round(secs / seconds, 3)}
    print(json.dumps({
        "threads": args.threads, "tokens_per_text": int(batch["attention_mask"][0].sum()), "texts_per_batch": args.batch,
        "s_per_batch": round(seconds, 3), "ms_per_text": round(1000 * seconds / args.batch, 2),
        "gflop_per_batch": round(flops / 1e9, 1), "minilm_gflop_per_s": round(flops / seconds / 1e9, 1),
        "matmul_2048_gflop_per_s": round(peak / 1e9, 1), "share_of_matmul_rate": round(flops / seconds / peak, 3),
    } | onnx, indent=1))


if __name__ == "__main__":
    main()
