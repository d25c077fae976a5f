#!/bin/sh
# The compose stack's one-shot `seed` job: build the demo bundle unless one is
# mounted at $HMPPS_BUNDLE, verify it, publish it to Redis and point the live
# alias at it. Safe to rerun: publishing a version again rewrites the same keys.
set -eu
SEED_DIR=${SEED_DIR:-/bundles/demo}
DEMO_BUNDLE="$SEED_DIR/pipeline/bundle"
BUNDLE=${HMPPS_BUNDLE:-$DEMO_BUNDLE}
: "${REDIS_URL:?set REDIS_URL (e.g. redis://redis:6379/0)}"

if [ -f "$BUNDLE/manifest.json" ]; then
  echo "seed: using the bundle at $BUNDLE"
elif [ "$BUNDLE" != "$DEMO_BUNDLE" ]; then
  echo "seed: no bundle at HMPPS_BUNDLE=$BUNDLE: mount one there, or unset it to build the demo" >&2
  exit 2
else
  echo "seed: no bundle at $BUNDLE; building the demo (synthetic data, tiny teacher, student)"
  hmpps data synthetic --users 150 --products 120 --seed 3 --out "$SEED_DIR/data"
  hmpps pipeline --data "$SEED_DIR/data" --first-stage hem --profile tiny --out "$SEED_DIR/pipeline"
fi
hmpps bundle verify "$BUNDLE"
hmpps publish --bundle "$BUNDLE" --redis-url "$REDIS_URL" --activate
