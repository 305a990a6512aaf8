#!/usr/bin/env bash
# SDK interop suite: the official Centrifugo SDKs (npm `centrifuge`, PyPI
# `centrifuge-python`) against hubbub's /connection/websocket.
#
#   interop/run.sh            install (if needed), build, run JS, Python, then
#                             the JS cluster subset (three nodes on a real
#                             redis-server it starts: interop/cluster.sh)
#
# Environment:
#   HUBBUB_BIN          server binary; relative paths are taken from the repo root.
#                       Default $CARGO_TARGET_DIR (or target)/debug/hubbub, built first with
#                       `cargo build -p hubbub` (a no-op when up to date).
#   HUBBUB_EXTRA_ARGS   extra flags for every server the tests start
#   HUBBUB_LOG=1        echo the servers' output
#   INTEROP_SUITES      which suites to run (default "js python cluster")
#   INTEROP_SKIP_INSTALL=1  skip npm ci / pip install (use what is installed)
#
# Each test file starts and stops its own servers on free 127.0.0.1 ports and
# kills only the processes it started. Each suite is bounded by `timeout`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"
SUITES="${INTEROP_SUITES:-js python cluster}"
SUITE_TIMEOUT="${INTEROP_SUITE_TIMEOUT:-100}"

log() { printf '\n=== interop: %s\n' "$*"; }

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

install_js() {
  local stamp="$HERE/js/node_modules/.interop-lock-sha256"
  local want
  want="$(hash_of "$HERE/js/package-lock.json")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "js: node_modules up to date"
    return
  fi
  log "npm ci (interop/js)"
  (cd "$HERE/js" && npm ci --no-audit --no-fund)
  echo "$want" >"$stamp"
}

install_python() {
  local venv="$HERE/python/.venv"
  local stamp="$venv/.interop-requirements-sha256"
  local want
  want="$(hash_of "$HERE/python/requirements.txt")"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "python: venv up to date"
    return
  fi
  log "venv + pip install (interop/python)"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$HERE/python/requirements.txt"
  echo "$want" >"$stamp"
}

if [[ "${INTEROP_SKIP_INSTALL:-}" != "1" ]]; then
  for s in $SUITES; do
    case "$s" in
      js|cluster) install_js ;;
      python) install_python ;;
      *) echo "unknown suite: $s" >&2; exit 2 ;;
    esac
  done
fi

# The server binary.
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
  # Always build: a stale binary would test old code (a no-op when current).
  BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/hubbub"
  log "building $BIN (cargo build -p hubbub)"
  (cd "$REPO_ROOT" && cargo build -p hubbub)
fi
export HUBBUB_BIN="$BIN"
echo "server binary: $HUBBUB_BIN"

declare -A RESULT=()
FAILED=0

for s in $SUITES; do
  case "$s" in
    js)
      log "JS suite (centrifuge-js, node --test)"
      if (cd "$HERE/js" && timeout -k 5 "$SUITE_TIMEOUT" node --test --test-concurrency=3 test/); then
        RESULT[js]=PASS
      else
        RESULT[js]="FAIL (exit $?)"; FAILED=1
      fi
      ;;
    cluster)
      log "JS cluster subset (centrifuge-js, three nodes on redis-server)"
      if bash "$HERE/cluster.sh"; then
        RESULT[cluster]=PASS
      else
        RESULT[cluster]="FAIL (exit $?)"; FAILED=1
      fi
      ;;
    python)
      log "Python suite (centrifuge-python, pytest)"
      if (cd "$HERE/python" && timeout -k 5 "$SUITE_TIMEOUT" .venv/bin/python -m pytest); then
        RESULT[python]=PASS
      else
        RESULT[python]="FAIL (exit $?)"; FAILED=1
      fi
      ;;
  esac
done

log "summary"
for s in $SUITES; do
  printf '  %-7s %s\n' "$s" "${RESULT[$s]}"
done
exit "$FAILED"
