#!/usr/bin/env bash
# make bench: time the scoring call against its peers (bench-model), serve the
# demo bundle and sweep the open-loop rate to saturation, cross-check one rate
# with wrk, then serve the student and each peer (PyTorch eager, MiniLM int8
# cross-encoder) on the same HTTP path, one after another, at the same rates.
# Results land in docs/bench/ (JSON, Markdown, latency-vs-rate PNGs).
set -euo pipefail
BIN=${BIN:-.venv/bin}
DEMO=${DEMO:-runs/demo}
PORT=${PORT:-8050}
RATES=${RATES:-"50 100 200 300 400 500"}
DURATION=${DURATION:-20}
PEER_RATES=${PEER_RATES:-"5 10 25 50 100"}
PEER_DURATION=${PEER_DURATION:-15}
# peers get a budget their model can meet, so that the table shows their latency, not the fail-open path
PEER_BUDGET_MS=${PEER_BUDGET_MS:-1000}
OUT=${OUT:-docs/bench}
BUNDLE=$DEMO/pipeline/bundle
mkdir -p "$OUT"
export HMPPS_CACHE=${HMPPS_CACHE:-$PWD/$DEMO/cache}

if [ ! -f "$BUNDLE/manifest.json" ]; then
  "$BIN/hmpps" data synthetic --users 150 --products 120 --seed 3 --out "$DEMO/data"
  "$BIN/hmpps" pipeline --data "$DEMO/data" --first-stage hem --profile tiny --out "$DEMO/pipeline"
fi

# model level first (no server running): it also fine-tunes and exports the cross-encoder peer
"$BIN/hmpps" bench-model --pipeline "$DEMO/pipeline" --data "$DEMO/data" --out "$OUT/model_bench.json"

SERVER=""
trap '[ -n "$SERVER" ] && { kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; }' EXIT INT TERM
wait_ready() {
  for _ in $(seq 1 240); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "service on port $PORT did not become ready" >&2; return 1
}
stop_server() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""; }

"$BIN/hmpps" serve --bundle "$BUNDLE" --port "$PORT" &
SERVER=$!
wait_ready

reports=()
for r in $RATES; do
  f="$OUT/sweep_${r}rps.json"
  "$BIN/hmpps" loadtest --url "http://127.0.0.1:$PORT" --rps "$r" --duration "$DURATION" --bundle "$BUNDLE" --out "$f"
  reports+=("$f")
  sleep 2  # let the queue drain between steps
done
"$BIN/hmpps" bench-report "${reports[@]}" --out "$OUT/sweep.md"

if command -v wrk >/dev/null; then
  "$BIN/hmpps" sample-request --bundle "$BUNDLE" --candidates 10 --seed 5 > "$OUT/.wrk_body.json"
  cat > "$OUT/.wrk_post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$OUT/.wrk_body.json", "r")
wrk.body = f:read("*a")
f:close()
LUA
  wrk -t1 -c1 -d10s --latency -s "$OUT/.wrk_post.lua" "http://127.0.0.1:$PORT/rerank" | tee "$OUT/wrk_c1.txt"
  rm -f "$OUT/.wrk_body.json" "$OUT/.wrk_post.lua"
else
  echo "wrk not installed (apt install wrk): skipping the cross-check" >&2
fi

stop_server

# side by side: the same service path, three scorers, the same rates and request mix
"$BIN/hmpps" sample-request --bundle "$BUNDLE" --candidates 10 --seed 7 > "$OUT/.warm_body.json"
peer_reports=()
for peer in student eager cross-encoder; do
  HMPPS_REQUEST_BUDGET_MS=$PEER_BUDGET_MS "$BIN/hmpps" serve-peer --peer "$peer" --pipeline "$DEMO/pipeline" --port "$PORT" &
  SERVER=$!
  wait_ready
  for _ in $(seq 1 20); do  # warm-up: first calls allocate (torch especially)
    curl -fs -X POST -H 'Content-Type: application/json' --data @"$OUT/.warm_body.json" "http://127.0.0.1:$PORT/rerank" >/dev/null
  done
  for r in $PEER_RATES; do
    f="$OUT/peer_${peer}_${r}rps.json"
    "$BIN/hmpps" loadtest --url "http://127.0.0.1:$PORT" --rps "$r" --duration "$PEER_DURATION" --bundle "$BUNDLE" --out "$f"
    peer_reports+=("$f")
    sleep 2
  done
  stop_server
done
rm -f "$OUT/.warm_body.json"
trap - EXIT
"$BIN/hmpps" bench-report "${peer_reports[@]}" --out "$OUT/peers.md"
