#!/usr/bin/env bash
# make tools: the Debian tools some tests and targets need. Exit 0: all there; 2: some still missing
# (make goes on without recording them as installed, so the next run tries again); 1: missing under CI=true.
set -uo pipefail
declare -A PKG=([prometheus]=prometheus [promtool]=prometheus [redis-server]=redis-server [redis-cli]=redis-server
                [wrk]=wrk [curl]=curl)
missing=()
for tool in "${!PKG[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(for t in "${missing[@]}"; do echo "${PKG[$t]}"; done | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's $pkgs for the tests that need them"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; }
  # the packages start their daemons; the tests start their own
  (service redis-server stop || pkill -x redis-server) >/dev/null 2>&1 || true
  (service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi
still=()
for tool in "${missing[@]}"; do command -v "$tool" >/dev/null || still+=("$tool"); done
[ ${#still[@]} -eq 0 ] && exit 0
case "${CI:-}" in
  1|true|TRUE|yes)
    echo "error: ${still[*]} not installed (apt-get install $pkgs as root); CI=true needs every tool" >&2
    exit 1 ;;
  *)
    echo "note: ${still[*]} not installed (apt-get install $pkgs as root); the checks that need them will skip" >&2
    exit 2 ;;
esac
