#!/usr/bin/env bash
# Browser suite: hubbub's chat page (GET /) in headless Chromium, driven by
# playwright-core, against the real binary.
#
#   interop/browser/run.sh      install (if needed), build, run every test
#
# Needs node >= 20 and Chromium (Debian: `apt-get install chromium`).
# Environment:
#   HUBBUB_BIN          server binary; relative paths are taken from the repo root.
#                       Default $CARGO_TARGET_DIR (or target)/debug/hubbub, built first with
#                       `cargo build -p hubbub` (a no-op when up to date).
#   CHROMIUM            the browser (default /usr/bin/chromium)
#   HUBBUB_LOG=1        echo the servers' output
#   BROWSER_SUITE_TIMEOUT  seconds for the whole suite (default 240)
#   BROWSER_SKIP_INSTALL=1 skip npm ci (use what is installed)
#
# Each test file starts and stops its own servers on free 127.0.0.1 ports and
# kills only the processes it started. Screenshots land in interop/browser/out/
# (docs/chat.png is a copy of out/chat.png).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
SUITE_TIMEOUT="${BROWSER_SUITE_TIMEOUT:-240}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

log() { printf '\n=== browser: %s\n' "$*"; }

if [[ ! -x "$CHROMIUM" ]]; then
  echo "no Chromium at $CHROMIUM: apt-get install -y --no-install-recommends chromium (or set CHROMIUM)" >&2
  exit 2
fi

if [[ "${BROWSER_SKIP_INSTALL:-}" != "1" ]]; then
  stamp="$HERE/node_modules/.browser-lock-sha256"
  want="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "node_modules up to date"
  else
    log "npm ci (interop/browser)"
    (cd "$HERE" && npm ci --no-audit --no-fund)
    echo "$want" >"$stamp"
  fi
fi

if [[ -n "${HUBBUB_BIN:-}" ]]; then
  case "$HUBBUB_BIN" in
    /*) BIN="$HUBBUB_BIN" ;;
    *) BIN="$REPO_ROOT/$HUBBUB_BIN" ;;
  esac
  if [[ ! -x "$BIN" ]]; then
    echo "HUBBUB_BIN=$HUBBUB_BIN: no executable at $BIN" >&2
    exit 2
  fi
else
  # Always build: a stale binary would serve an old page.
  BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/hubbub"
  log "building $BIN (cargo build -p hubbub)"
  (cd "$REPO_ROOT" && cargo build -p hubbub)
fi
export HUBBUB_BIN="$BIN"
echo "server binary: $HUBBUB_BIN"
echo "browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

log "tests (node --test, headless Chromium)"
cd "$HERE"
# Two files at a time: each runs its own browser and servers.
exec timeout -k 5 "$SUITE_TIMEOUT" node --test --test-concurrency=2 test/
