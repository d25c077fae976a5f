#!/usr/bin/env bash
# make bench: serve the demo bundle, sweep the open-loop rate to saturation,
# cross-check one rate with wrk, and time the scoring call against its peers.
# Results land in docs/bench/ (JSON, Markdown, latency-vs-rate PNG).
set -euo pipefail
BIN=${BIN:-.venv/bin}
DEMO=${DEMO:-runs/demo}
PORT=${PORT:-8050}
RATES=${RATES:-"50 100 200 300 400 500"}
DURATION=${DURATION:-20}
OUT=${OUT:-docs/bench}
BUNDLE=$DEMO/pipeline/bundle
mkdir -p "$OUT"
export HMPPS_CACHE=${HMPPS_CACHE:-$PWD/$DEMO/cache}

if [ ! -f "$BUNDLE/manifest.json" ]; then
  "$BIN/hmpps" data synthetic --users 150 --products 120 --seed 3 --out "$DEMO/data"
  "$BIN/hmpps" pipeline --data "$DEMO/data" --first-stage hem --profile tiny --out "$DEMO/pipeline"
fi

"$BIN/hmpps" serve --bundle "$BUNDLE" --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.5; done

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

kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT
"$BIN/hmpps" bench-model --pipeline "$DEMO/pipeline" --data "$DEMO/data" --out "$OUT/model_bench.json"
