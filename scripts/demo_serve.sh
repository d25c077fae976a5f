#!/usr/bin/env bash
# The end of `make demo`: start the service on the demo bundle (embedded Redis),
# send one real request, show a curl line to try, and keep the service up.
set -euo pipefail
BIN=${BIN:-.venv/bin}
BUNDLE=${1:?usage: demo_serve.sh BUNDLE_DIR [PORT]}
PORT=${2:-8000}
export HMPPS_CACHE=${HMPPS_CACHE:-$PWD/runs/demo/cache}

# HTTP with the venv's Python (standard library only), so the demo needs no curl
ready() {
  "$BIN/python" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1
}
post() {  # post PATH JSON: print the response body
  "$BIN/python" -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"content-type": "application/json"})
print(u.urlopen(r, timeout=30).read().decode())' "http://127.0.0.1:$PORT$1" "$2"
}

"$BIN/hmpps" serve --bundle "$BUNDLE" --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 120); do
  if ready; then break; fi
  kill -0 $SERVER 2>/dev/null || { echo "the service exited during startup" >&2; exit 1; }
  sleep 0.5
done
ready || { echo "the service did not become ready" >&2; exit 1; }

BODY=$("$BIN/hmpps" sample-request --bundle "$BUNDLE" --candidates 5)
echo
echo "== sample rerank =="
echo "request:  $BODY"
echo "response:"
post /rerank "$BODY" | "$BIN/python" -m json.tool
# the user buys one of the candidates: the next rerank already uses it
PRODUCT=$(echo "$BODY" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["candidates"][-1]["product_id"])')
USER_ID=$(echo "$BODY" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["user_id"])')
EVENT="{\"events\": [{\"event_id\": \"demo-$(date +%s)\", \"user_id\": \"$USER_ID\", \"product_id\": \"$PRODUCT\", \"type\": \"purchase\", \"timestamp\": $(date +%s)}]}"
echo
echo "== $USER_ID buys $PRODUCT: POST /events =="
echo "request:  $EVENT"
echo "response: $(post /events "$EVENT")"
EXPLAIN=$(echo "$BODY" | "$BIN/python" -c 'import json,sys; b=json.load(sys.stdin); b["explain"]=True; print(json.dumps(b))')
echo
echo "== the same rerank with \"explain\": true: $PRODUCT now leads the history the model sees =="
post /rerank "$EXPLAIN" \
  | "$BIN/python" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"explain": r["explain"], "results": [{k: x[k] for k in ("product_id", "rank", "original_rank", "explain")} for x in r["results"]]}, indent=1))'
echo
echo "== try it yourself (README quick start) =="
echo "curl -s -X POST http://127.0.0.1:$PORT/rerank -H 'content-type: application/json' -d '$BODY'"
echo
echo "Docs: http://127.0.0.1:$PORT/docs   Metrics: http://127.0.0.1:$PORT/metrics   Ctrl-C stops the service."
wait $SERVER
