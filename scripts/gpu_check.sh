#!/usr/bin/env bash
# The GPU check: the student's ONNX session on CUDA (parity with CPU, K=10 latency), one training
# step and one query scored by the hf-vlm backbone on a tiny random VLM in bf16, and SmolLM2's
# composed backbone on CUDA. Without CUDA, the CPU-side checks run and the rest say SKIP.
# At most 8 minutes on one GPU; exits 1 if a check that ran failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" "$PY" scripts/gpu_check.py "$@"
